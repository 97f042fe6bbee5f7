//! What a pipeline run reports: [`Summary`], [`RowFailure`], [`PipelineError`].

use std::fmt;

use crate::csv::CsvError;

/// How many failures a [`Summary`] keeps (every one still goes to the error sink).
pub const KEPT_FAILURES: usize = 1000;

/// A row that did not make it to the output, and why.
#[derive(Debug)]
#[non_exhaustive]
pub struct RowFailure {
    /// The line the row starts on, from 1 (the header is line 1).
    pub line: u64,
    /// What went wrong.
    pub reason: FailureReason,
}

/// Why a row failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FailureReason {
    /// The record is not well-formed CSV (ragged, a stray quote, invalid UTF-8).
    Csv(CsvError),
    /// The transform returned an error; its message.
    Transform(String),
}

impl fmt::Display for RowFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            // A CSV error names its line itself.
            FailureReason::Csv(error) => write!(f, "{error}"),
            FailureReason::Transform(message) => write!(f, "line {}: {message}", self.line),
        }
    }
}

/// What a pipeline run did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Summary {
    /// Data records read (the header not included), well-formed or not.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Rows the transform filtered out.
    pub filtered: u64,
    /// Rows that failed: malformed records and transform errors.
    pub failed: u64,
    /// The first [`KEPT_FAILURES`] failures, in input order.
    pub failures: Vec<RowFailure>,
    /// Bytes read from the input.
    pub bytes_in: u64,
    /// Bytes written to the output (compressed, with gzip).
    pub bytes_out: u64,
    /// The most bytes the pipeline's own buffers held at once: the read buffer, the record,
    /// the output row, the chunks between the stages and the compressor's output buffer.
    /// It does not grow with the input.
    pub peak_buffered: usize,
}

/// Why a pipeline run stopped before the end of its input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The input cannot be read further: an I/O error, no header line, or a quoted field
    /// still open at the end.
    #[error("reading the input failed: {0}")]
    Read(#[source] CsvError),
    /// Writing the output failed.
    #[error("writing the output failed: {0}")]
    Write(#[source] std::io::Error),
    /// More rows failed than the error limit allows.
    #[error("more than {limit} rows failed; the last at line {line}")]
    TooManyErrors {
        /// The limit set with [`Pipeline::error_limit`](crate::pipeline::Pipeline::error_limit).
        limit: u64,
        /// The line of the row that went over it.
        line: u64,
    },
}
