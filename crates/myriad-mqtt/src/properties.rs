//! MQTT 5.0 properties.
//!
//! One [`Properties`] struct serves every packet: each field is a property
//! the specification defines, unset when absent. Which properties a packet
//! may carry is checked by the decoder ([`PropertyId::allowed_in`]); an
//! encoder writes every field that is set. On 3.1.1 properties are neither
//! read nor written.
//!
//! Packets (and wills) hold their properties through [`PacketProperties`],
//! which keeps them out of line and allocates only when there are some: most
//! packets carry none, and a `Properties` value is several hundred bytes.

use std::fmt;
use std::ops::{Deref, DerefMut};

use bytes::Bytes;
use bytestring::ByteString;

use crate::PacketType;

/// Every MQTT 5.0 property, with the identifier byte it has on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum PropertyId {
    PayloadFormatIndicator = 0x01,
    MessageExpiryInterval = 0x02,
    ContentType = 0x03,
    ResponseTopic = 0x08,
    CorrelationData = 0x09,
    SubscriptionIdentifier = 0x0B,
    SessionExpiryInterval = 0x11,
    AssignedClientIdentifier = 0x12,
    ServerKeepAlive = 0x13,
    AuthenticationMethod = 0x15,
    AuthenticationData = 0x16,
    RequestProblemInformation = 0x17,
    WillDelayInterval = 0x18,
    RequestResponseInformation = 0x19,
    ResponseInformation = 0x1A,
    ServerReference = 0x1C,
    ReasonString = 0x1F,
    ReceiveMaximum = 0x21,
    TopicAliasMaximum = 0x22,
    TopicAlias = 0x23,
    MaximumQoS = 0x24,
    RetainAvailable = 0x25,
    UserProperty = 0x26,
    MaximumPacketSize = 0x27,
    WildcardSubscriptionAvailable = 0x28,
    SubscriptionIdentifierAvailable = 0x29,
    SharedSubscriptionAvailable = 0x2A,
}

/// Where a property may appear: a packet type, or the will properties of CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    /// The properties of a packet of this type.
    Packet(PacketType),
    /// The will properties inside CONNECT.
    Will,
}

impl PropertyId {
    /// Parses a property identifier byte; `None` for unknown identifiers.
    pub fn from_u8(value: u8) -> Option<PropertyId> {
        use PropertyId::*;
        Some(match value {
            0x01 => PayloadFormatIndicator,
            0x02 => MessageExpiryInterval,
            0x03 => ContentType,
            0x08 => ResponseTopic,
            0x09 => CorrelationData,
            0x0B => SubscriptionIdentifier,
            0x11 => SessionExpiryInterval,
            0x12 => AssignedClientIdentifier,
            0x13 => ServerKeepAlive,
            0x15 => AuthenticationMethod,
            0x16 => AuthenticationData,
            0x17 => RequestProblemInformation,
            0x18 => WillDelayInterval,
            0x19 => RequestResponseInformation,
            0x1A => ResponseInformation,
            0x1C => ServerReference,
            0x1F => ReasonString,
            0x21 => ReceiveMaximum,
            0x22 => TopicAliasMaximum,
            0x23 => TopicAlias,
            0x24 => MaximumQoS,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }

    /// Whether the specification allows this property in `context`.
    pub fn allowed_in(self, context: PropertyContext) -> bool {
        use PacketType as P;
        use PropertyId::*;
        let packet = match context {
            PropertyContext::Will => {
                return matches!(
                    self,
                    PayloadFormatIndicator
                        | MessageExpiryInterval
                        | ContentType
                        | ResponseTopic
                        | CorrelationData
                        | WillDelayInterval
                        | UserProperty
                );
            }
            PropertyContext::Packet(packet) => packet,
        };
        match self {
            UserProperty => !matches!(packet, P::PingReq | P::PingResp),
            PayloadFormatIndicator
            | MessageExpiryInterval
            | ContentType
            | ResponseTopic
            | CorrelationData
            | TopicAlias => packet == P::Publish,
            SubscriptionIdentifier => matches!(packet, P::Publish | P::Subscribe),
            SessionExpiryInterval => matches!(packet, P::Connect | P::ConnAck | P::Disconnect),
            AssignedClientIdentifier
            | ServerKeepAlive
            | ResponseInformation
            | MaximumQoS
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => packet == P::ConnAck,
            AuthenticationMethod | AuthenticationData => {
                matches!(packet, P::Connect | P::ConnAck | P::Auth)
            }
            RequestProblemInformation | RequestResponseInformation => packet == P::Connect,
            WillDelayInterval => false,
            ServerReference => matches!(packet, P::ConnAck | P::Disconnect),
            ReasonString => matches!(
                packet,
                P::ConnAck
                    | P::PubAck
                    | P::PubRec
                    | P::PubRel
                    | P::PubComp
                    | P::SubAck
                    | P::UnsubAck
                    | P::Disconnect
                    | P::Auth
            ),
            ReceiveMaximum | TopicAliasMaximum | MaximumPacketSize => {
                matches!(packet, P::Connect | P::ConnAck)
            }
        }
    }
}

/// The properties of one packet (or of a will). Unset fields are absent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01: payload is unspecified bytes (`false`) or UTF-8 (`true`).
    pub payload_format_indicator: Option<bool>,
    /// 0x02: lifetime of the message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: MIME type of the payload.
    pub content_type: Option<ByteString>,
    /// 0x08: topic for a response.
    pub response_topic: Option<ByteString>,
    /// 0x09: correlation data for a response.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: subscription identifiers (one in SUBSCRIBE, any number in PUBLISH).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11: session expiry interval in seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12: client identifier assigned by the server.
    pub assigned_client_identifier: Option<ByteString>,
    /// 0x13: keep alive the server requires, in seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15: name of the extended authentication method.
    pub authentication_method: Option<ByteString>,
    /// 0x16: extended authentication data.
    pub authentication_data: Option<Bytes>,
    /// 0x17: whether the client wants reason strings and user properties on failures.
    pub request_problem_information: Option<bool>,
    /// 0x18: delay before the will is published, in seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19: whether the client wants response information in CONNACK.
    pub request_response_information: Option<bool>,
    /// 0x1A: basis for response topics.
    pub response_information: Option<ByteString>,
    /// 0x1C: another server to use.
    pub server_reference: Option<ByteString>,
    /// 0x1F: human-readable reason.
    pub reason_string: Option<ByteString>,
    /// 0x21: how many QoS 1/2 publications the sender accepts at once.
    pub receive_maximum: Option<u16>,
    /// 0x22: highest topic alias the sender accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: topic alias of this publication.
    pub topic_alias: Option<u16>,
    /// 0x24: highest QoS the server supports (0 or 1; absent means 2).
    pub maximum_qos: Option<u8>,
    /// 0x25: whether retained messages are supported.
    pub retain_available: Option<bool>,
    /// 0x26: user properties, in order, duplicates allowed.
    pub user_properties: Vec<(ByteString, ByteString)>,
    /// 0x27: largest packet the sender accepts, in bytes.
    pub maximum_packet_size: Option<u32>,
    /// 0x28: whether wildcard subscriptions are supported.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29: whether subscription identifiers are supported.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A: whether shared subscriptions are supported.
    pub shared_subscription_available: Option<bool>,
}

/// The properties of a packet without any, shared by every unset [`PacketProperties`].
static EMPTY: Properties = Properties::new();

impl Properties {
    /// Properties with nothing set; the same as `Properties::default()`, usable in `const`.
    pub const fn new() -> Properties {
        Properties {
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            subscription_identifiers: Vec::new(),
            session_expiry_interval: None,
            assigned_client_identifier: None,
            server_keep_alive: None,
            authentication_method: None,
            authentication_data: None,
            request_problem_information: None,
            will_delay_interval: None,
            request_response_information: None,
            response_information: None,
            server_reference: None,
            reason_string: None,
            receive_maximum: None,
            topic_alias_maximum: None,
            topic_alias: None,
            maximum_qos: None,
            retain_available: None,
            user_properties: Vec::new(),
            maximum_packet_size: None,
            wildcard_subscription_available: None,
            subscription_identifier_available: None,
            shared_subscription_available: None,
        }
    }

    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == EMPTY
    }
}

/// The properties of a packet or a will, stored out of line.
///
/// Unset by default, without an allocation; reading through it (it
/// dereferences to [`Properties`]) then sees empty properties. The first
/// mutable access allocates, so `publish.properties.topic_alias = Some(3)`
/// works as it would on a plain `Properties`. Equality compares the
/// properties themselves: unset equals set-but-empty.
#[derive(Clone, Default)]
pub struct PacketProperties(Option<Box<Properties>>);

impl PacketProperties {
    /// Unset properties, without an allocation.
    pub const fn new() -> PacketProperties {
        PacketProperties(None)
    }

    /// True when no property is set (whether or not storage was allocated).
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(Properties::is_empty)
    }

    /// The stored properties; `None` when unset (nothing allocated).
    ///
    /// A `Some` may still be empty; use [`PacketProperties::is_empty`] to
    /// ask whether any property is set.
    pub fn get(&self) -> Option<&Properties> {
        self.0.as_deref()
    }

    /// The stored properties, mutably, without allocating; `None` when unset.
    pub fn get_mut(&mut self) -> Option<&mut Properties> {
        self.0.as_deref_mut()
    }

    /// Frees the storage if no property is set, so that clones allocate nothing.
    pub fn shrink(&mut self) {
        if self.0.as_deref().is_some_and(Properties::is_empty) {
            self.0 = None;
        }
    }

    /// The properties by value; empty when unset.
    pub fn into_inner(self) -> Properties {
        self.0.map_or_else(Properties::new, |boxed| *boxed)
    }

    /// Takes the properties out, leaving these unset.
    pub fn take(&mut self) -> Properties {
        std::mem::take(self).into_inner()
    }
}

impl Deref for PacketProperties {
    type Target = Properties;

    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl DerefMut for PacketProperties {
    /// Allocates empty properties on first use.
    fn deref_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<Properties> for PacketProperties {
    /// Stays unallocated when `properties` is empty.
    fn from(properties: Properties) -> PacketProperties {
        if properties.is_empty() {
            PacketProperties(None)
        } else {
            PacketProperties(Some(Box::new(properties)))
        }
    }
}

impl From<PacketProperties> for Properties {
    fn from(properties: PacketProperties) -> Properties {
        properties.into_inner()
    }
}

impl fmt::Debug for PacketProperties {
    /// Formats as the [`Properties`] it stands for.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for PacketProperties {
    fn eq(&self, other: &PacketProperties) -> bool {
        match (self.0.as_deref(), other.0.as_deref()) {
            (None, None) => true,
            _ => **self == **other,
        }
    }
}

impl Eq for PacketProperties {}

impl PartialEq<Properties> for PacketProperties {
    fn eq(&self, other: &Properties) -> bool {
        **self == *other
    }
}

impl PartialEq<PacketProperties> for Properties {
    fn eq(&self, other: &PacketProperties) -> bool {
        *self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn const_new_is_default() {
        assert_eq!(Properties::new(), Properties::default());
        assert!(Properties::new().is_empty());
    }

    #[test]
    fn unset_reads_as_empty_without_allocating() {
        let props = PacketProperties::default();
        assert!(props.get().is_none());
        assert!(props.is_empty());
        assert!(props.user_properties.is_empty());
        assert_eq!(props.topic_alias, None);
        assert!(props.clone().get().is_none());
    }

    #[test]
    fn mutable_access_allocates() {
        let mut props = PacketProperties::new();
        props.topic_alias = Some(3);
        assert_eq!(props.get().and_then(|p| p.topic_alias), Some(3));
        assert!(!props.is_empty());
        assert_eq!(props.clone(), props);
    }

    #[test]
    fn from_empty_properties_stays_unset() {
        assert!(
            PacketProperties::from(Properties::default())
                .get()
                .is_none()
        );
        let set = Properties {
            reason_string: Some("r".into()),
            ..Properties::default()
        };
        let props = PacketProperties::from(set.clone());
        assert_eq!(props.get(), Some(&set));
        assert_eq!(props.into_inner(), set);
    }

    #[test]
    fn equality_compares_contents() {
        let mut allocated_empty = PacketProperties::new();
        allocated_empty.user_properties.clear();
        assert!(allocated_empty.get().is_some());
        assert!(allocated_empty.is_empty());
        assert_eq!(allocated_empty, PacketProperties::new());
        assert_eq!(PacketProperties::new(), allocated_empty);
        assert_eq!(allocated_empty, Properties::default());
        let mut set = PacketProperties::new();
        set.topic_alias = Some(1);
        assert_ne!(set, PacketProperties::new());
        assert_ne!(PacketProperties::new(), set);
        assert_eq!(
            format!("{:?}", PacketProperties::new()),
            format!("{:?}", Properties::default())
        );
    }

    #[test]
    fn shrink_and_take() {
        let mut props = PacketProperties::new();
        props.subscription_identifiers.push(7);
        props.shrink();
        assert!(props.get().is_some());
        props.subscription_identifiers.clear();
        props.shrink();
        assert!(props.get().is_none());
        props.maximum_qos = Some(1);
        let taken = props.take();
        assert_eq!(taken.maximum_qos, Some(1));
        assert!(props.get().is_none());
    }
}
