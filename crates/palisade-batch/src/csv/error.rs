//! What can go wrong reading CSV.

/// A problem with one record, or with reading the input.
///
/// Every record-level error carries the line the record starts on (1-based, the header being
/// line 1) and leaves the reader at the next record: reading can go on. [`CsvError::Io`]
/// and [`CsvError::UnterminatedQuote`] end the input ([`CsvError::is_fatal`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsvError {
    /// A record with a different number of fields from the header (or, without a header,
    /// from the first record).
    #[error("line {line}: expected {expected} fields, found {found}")]
    Ragged {
        /// The line the record starts on.
        line: u64,
        /// The header's field count.
        expected: usize,
        /// The record's field count.
        found: usize,
    },
    /// A quote where RFC 4180 allows none: inside an unquoted field, or after a closing
    /// quote before the next delimiter.
    #[error("line {line}, field {field}: {problem}")]
    Malformed {
        /// The line the record starts on.
        line: u64,
        /// The field, from 1.
        field: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// A record that is not valid UTF-8.
    #[error("line {line}: the record is not valid UTF-8")]
    InvalidUtf8 {
        /// The line the record starts on.
        line: u64,
    },
    /// The input ended inside a quoted field.
    #[error("line {line}: a quoted field is not closed before the end of the input")]
    UnterminatedQuote {
        /// The line the record starts on.
        line: u64,
    },
    /// The input has no header line.
    #[error("the input is empty: no header line")]
    MissingHeader,
    /// Reading failed.
    #[error("reading CSV failed: {0}")]
    Io(#[from] std::io::Error),
}

impl CsvError {
    /// The line the record starts on, for record-level errors.
    pub fn line(&self) -> Option<u64> {
        match self {
            CsvError::Ragged { line, .. }
            | CsvError::Malformed { line, .. }
            | CsvError::InvalidUtf8 { line }
            | CsvError::UnterminatedQuote { line } => Some(*line),
            CsvError::MissingHeader | CsvError::Io(_) => None,
        }
    }

    /// Whether the input cannot be read further: an I/O error, a missing header or an
    /// unterminated quote. Other errors concern one record; the next can be read.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            CsvError::Io(_) | CsvError::UnterminatedQuote { .. } | CsvError::MissingHeader
        )
    }
}
