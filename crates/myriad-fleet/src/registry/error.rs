//! Why a name or a record is not valid.

/// Why a string is not a valid id (device id, app id, group name or
/// attribute key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("is empty")]
    Empty,
    /// The string is longer than allowed.
    #[error("is {len} bytes long, at most {max} allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A device id starting with `app:`, the prefix of application
    /// clients' user names: such a device could never log in.
    #[error("starts with \"app:\", which is reserved for application clients' user names")]
    ReservedPrefix,
    /// The string holds a character outside `[A-Za-z0-9_.:-]`.
    #[error("has {ch:?} at byte {at}; only A-Z a-z 0-9 _ . : - are allowed")]
    BadChar {
        /// The first offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

/// Why a device, an app client, a patch or a query is not valid. The
/// message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The device or app id.
    #[error("id {id:?} {reason}")]
    Id {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: IdError,
    },
    /// The name is too long.
    #[error("name is {len} bytes long, at most {max} allowed")]
    NameTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many attributes.
    #[error("{count} attributes, at most {max} allowed")]
    TooManyAttributes {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An attribute key is not valid.
    #[error("attribute key {key:?} {reason}")]
    AttributeKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: IdError,
    },
    /// An attribute value is not valid.
    #[error("attribute {key:?}: value {reason}")]
    AttributeValue {
        /// The attribute's key.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// Too many groups.
    #[error("{count} groups, at most {max} allowed")]
    TooManyGroups {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A group name is not valid.
    #[error("group {group:?} {reason}")]
    Group {
        /// The group name as given.
        group: String,
        /// What is wrong with it.
        reason: IdError,
    },
    /// Too many filters in an app client's list.
    #[error("{list}: {count} filters, at most {max} allowed")]
    TooManyFilters {
        /// `publish` or `subscribe`.
        list: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An app client's filter is not valid.
    #[error("{list}: filter {filter:?} {reason}")]
    Filter {
        /// `publish` or `subscribe`.
        list: &'static str,
        /// The filter as given.
        filter: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A page size outside the allowed range.
    #[error("limit {limit} is outside 1..={max}")]
    Limit {
        /// The limit as given.
        limit: u32,
        /// The largest allowed.
        max: u32,
    },
}
