//! The query string and the report of a bulk import.

use myriad_fleet::import::{ImportFormat, ImportReport, RowError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

/// How the body is formatted.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImportParams {
    /// `csv` (a header row, then one device a row) or `jsonl` (one JSON
    /// object a line).
    #[param(required = true, value_type = String, pattern = "^(csv|jsonl)$")]
    pub format: Option<String>,
    /// `true`: a row whose id is an existing device updates it (name,
    /// attributes, groups, enabled replaced by the row's; the password only
    /// when the row gives one) instead of failing.
    #[param(value_type = Option<bool>)]
    pub upsert: Option<String>,
}

impl ImportParams {
    /// Whether to update existing devices; 400 if not `true` / `false`.
    pub fn upsert(&self) -> Result<bool, ApiError> {
        match self.upsert.as_deref() {
            None | Some("") | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "upsert must be true or false, got {other:?}"
            ))),
        }
    }

    /// The format asked for; 400 if absent or unknown.
    pub fn format(&self) -> Result<ImportFormat, ApiError> {
        match self.format.as_deref() {
            Some("csv") => Ok(ImportFormat::Csv),
            Some("jsonl") => Ok(ImportFormat::JsonLines),
            Some(other) => Err(ApiError::BadRequest(format!(
                "format must be csv or jsonl, got {other:?}"
            ))),
            None => Err(ApiError::BadRequest(
                "format is required: ?format=csv or ?format=jsonl".into(),
            )),
        }
    }
}

/// What an import did. Good rows landed; bad rows are listed with their
/// line numbers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ImportReport)]
pub(crate) struct ImportReportBody {
    /// Devices created.
    pub imported: u64,
    /// Existing devices updated (with `upsert=true`).
    pub updated: u64,
    /// Bad rows, in file order (at most 1,000).
    pub failed: Vec<RowErrorBody>,
    /// Whether the import stopped because of too many bad rows (later rows
    /// were not read).
    pub truncated_errors: bool,
    /// The line at which reading stopped, when it stopped early.
    pub stopped_at_line: Option<u64>,
}

/// A bad row of an import.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RowError)]
pub(crate) struct RowErrorBody {
    /// Its 1-based line number in the file.
    pub line: u64,
    /// Its id, if one could be read.
    pub id: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl From<ImportReport> for ImportReportBody {
    fn from(report: ImportReport) -> Self {
        ImportReportBody {
            imported: report.imported,
            updated: report.updated,
            failed: report.failed.into_iter().map(RowErrorBody::from).collect(),
            truncated_errors: report.truncated_errors,
            stopped_at_line: report.stopped_at_line,
        }
    }
}

impl From<RowError> for RowErrorBody {
    fn from(error: RowError) -> Self {
        RowErrorBody {
            line: error.line,
            id: error.id,
            message: error.message,
        }
    }
}
