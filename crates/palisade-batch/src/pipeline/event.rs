//! What a pipeline run reports to its [`Listener`](palisade_core::Listener).

use palisade_core::event::{Event, Reading};

/// Where a run has got to: sent as [`PipelineEvent::Progress`] with every chunk handed to
/// the writer, and as [`PipelineEvent::Finished`] at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineProgress {
    /// Data records read so far.
    pub rows_in: u64,
    /// Rows written (or on their way to the writer).
    pub rows_out: u64,
    /// Rows filtered out so far.
    pub filtered: u64,
    /// Rows failed so far.
    pub failed: u64,
    /// Bytes read from the input so far.
    pub bytes_in: u64,
}

/// Something a [`Pipeline`](crate::pipeline::Pipeline) run reports; see
/// [`Pipeline::listener`](crate::pipeline::Pipeline::listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipelineEvent {
    /// A chunk of output was handed to the writer.
    Progress(PipelineProgress),
    /// A row failed: malformed, or refused by the transform (the error sink gets the
    /// whole [`RowFailure`](crate::pipeline::RowFailure)).
    RowFailed {
        /// The line the row starts on, from 1.
        line: u64,
    },
    /// More rows failed than the error limit allows: the run stops with
    /// [`PipelineError::TooManyErrors`](crate::pipeline::PipelineError::TooManyErrors).
    TooManyErrors {
        /// The error limit.
        limit: u64,
        /// The line of the row that went past it.
        line: u64,
    },
    /// The run is over and its output written: the last progress.
    Finished(PipelineProgress),
}

impl Event for PipelineEvent {
    fn component(&self) -> &'static str {
        "pipeline"
    }

    fn kind(&self) -> &'static str {
        match self {
            PipelineEvent::Progress(_) => "progress",
            PipelineEvent::RowFailed { .. } => "row_failed",
            PipelineEvent::TooManyErrors { .. } => "too_many_errors",
            PipelineEvent::Finished(_) => "finished",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            PipelineEvent::Progress(progress) | PipelineEvent::Finished(progress) => {
                record(Reading::gauge(
                    "palisade_pipeline_rows_in",
                    progress.rows_in as f64,
                ));
                record(Reading::gauge(
                    "palisade_pipeline_rows_out",
                    progress.rows_out as f64,
                ));
                record(Reading::gauge(
                    "palisade_pipeline_rows_failed",
                    progress.failed as f64,
                ));
                record(Reading::gauge(
                    "palisade_pipeline_bytes_in",
                    progress.bytes_in as f64,
                ));
            }
            PipelineEvent::RowFailed { .. } | PipelineEvent::TooManyErrors { .. } => {}
        }
    }
}
