//! The engine: series index and head together, producing WAL records for what they accept.
//!
//! Write path: [`Engine::series`] resolves a key (logging a series record when it creates one),
//! [`Engine::append`] applies a batch to the head point by point and logs the accepted points as
//! one record. The caller writes the bytes to its log and acknowledges once they are as durable
//! as configured. After a crash, [`Engine::replay`] rebuilds index and head from the log.

use crate::head::{AppendError, Head, HeadConfig};
use crate::index::{IndexError, IndexLimits, SeriesId, SeriesIndex, SeriesKey};
use crate::value::Point;
use crate::wal::{self, WalEncodeError, WalReader, WalRecord, WalStop};

/// Most points one [`Engine::append`] batch may carry: the worst-case encoding of each point
/// (26 bytes) must fit one WAL record of [`wal::MAX_RECORD_LEN`] bytes. One more is refused whole.
pub const MAX_BATCH_POINTS: usize = (wal::MAX_RECORD_LEN - 16) / 26;

/// Why one point of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    /// The series id is not in the index.
    #[error("unknown series {0:?}")]
    UnknownSeries(SeriesId),
    /// The head refused it.
    #[error(transparent)]
    Head(#[from] AppendError),
}

/// Why a batch or series could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The series key was refused by the index.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The WAL record could not be encoded.
    #[error(transparent)]
    Wal(#[from] WalEncodeError),
}

/// Outcome of [`Engine::append`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Points accepted (and logged).
    pub accepted: usize,
    /// Refused points: their index in the batch and why.
    pub refused: Vec<(usize, PointError)>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Whole records applied.
    pub records: usize,
    /// Series restored.
    pub series: usize,
    /// Points applied to the head.
    pub points: usize,
    /// Points in valid records that the head or index refused (none for a log this engine wrote).
    pub points_refused: usize,
    /// Series records refused by the index.
    pub series_refused: usize,
    /// Offset of the end of the last whole record: truncate the log here before appending.
    pub valid_len: usize,
    /// Bytes after `valid_len`, dropped.
    pub dropped_bytes: usize,
    /// Why replay stopped before the end, if it did.
    pub stop: Option<WalStop>,
}

/// Series index plus head.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    index: SeriesIndex,
    head: Head,
}

impl Engine {
    /// An empty engine.
    pub fn new(limits: IndexLimits, head: HeadConfig) -> Self {
        Self {
            index: SeriesIndex::new(limits),
            head: Head::new(head),
        }
    }

    /// The series index.
    pub fn index(&self) -> &SeriesIndex {
        &self.index
    }

    /// The head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Mutable head (for sealing).
    pub fn head_mut(&mut self) -> &mut Head {
        &mut self.head
    }

    /// The id of `key`; a new series is created and its record appended to `wal`.
    pub fn series(&mut self, key: &SeriesKey, wal: &mut Vec<u8>) -> Result<SeriesId, EngineError> {
        let (id, created) = self.index.get_or_create(key)?;
        if created {
            wal::encode_series(id, key, wal)?;
        }
        Ok(id)
    }

    /// Applies a batch; the accepted points are appended to `wal` as one record (none if no point
    /// was accepted). A batch too large for one record is refused whole before touching the head.
    pub fn append(
        &mut self,
        points: &[(SeriesId, Point)],
        wal: &mut Vec<u8>,
    ) -> Result<AppendReport, EngineError> {
        // Worst case per point: 5 (id) + 10 (ts) + 1 + 10 (value) bytes, plus type and count.
        if points.len() > MAX_BATCH_POINTS {
            let len = points.len().saturating_mul(26).saturating_add(16);
            return Err(WalEncodeError::TooLarge { len }.into());
        }
        let mut report = AppendReport::default();
        let mut accepted = Vec::with_capacity(points.len());
        for (i, &(id, p)) in points.iter().enumerate() {
            if !self.index.contains(id) {
                report.refused.push((i, PointError::UnknownSeries(id)));
                continue;
            }
            match self.head.append(id, p.ts, p.value) {
                Ok(_) => accepted.push((id, p)),
                Err(e) => report.refused.push((i, e.into())),
            }
        }
        report.accepted = accepted.len();
        if !accepted.is_empty() {
            wal::encode_points(&accepted, wal)?;
        }
        Ok(report)
    }

    /// Appends a series record for every series to `wal`: the start of a new log segment once
    /// the head has been sealed and the blocks persisted, so the old segment can be deleted.
    pub fn checkpoint(&self, wal: &mut Vec<u8>) -> Result<(), EngineError> {
        for id in (0..self.index.len() as u32).map(SeriesId) {
            if let Some(key) = self.index.key(id) {
                wal::encode_series(id, &key, wal)?;
            }
        }
        Ok(())
    }

    /// Rebuilds index and head from a log (normally into an empty engine), stopping at the first
    /// record that is torn, fails its CRC or does not parse.
    pub fn replay(&mut self, log: &[u8]) -> ReplayReport {
        let mut report = ReplayReport::default();
        let mut reader = WalReader::new(log);
        for rec in reader.by_ref() {
            report.records += 1;
            match rec {
                WalRecord::Series { id, key } => match self.index.restore(id, key) {
                    Ok(()) => report.series += 1,
                    Err(_) => report.series_refused += 1,
                },
                WalRecord::Points(pts) => {
                    for (id, p) in pts {
                        let ok =
                            self.index.contains(id) && self.head.append(id, p.ts, p.value).is_ok();
                        if ok {
                            report.points += 1;
                        } else {
                            report.points_refused += 1;
                        }
                    }
                }
            }
        }
        report.valid_len = reader.valid_len();
        report.dropped_bytes = log.len() - report.valid_len;
        report.stop = reader.stop().cloned();
        report
    }
}
