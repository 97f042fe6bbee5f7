//! What a batch run reports to its [`Listener`](palisade_core::Listener).

use std::time::Duration;

use palisade_core::event::{Event, Reading};

/// How far a run has got: sent with every finished item as [`BatchEvent::Progress`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Items finished so far (succeeded, failed or cancelled).
    pub done: u64,
    /// How many items there are, when known: the length of an exact-size iterator, or
    /// what [`Batch::total`](crate::Batch::total) said.
    pub total: Option<u64>,
    /// Items that succeeded so far.
    pub succeeded: u64,
    /// Items that failed so far (after their retries).
    pub failed: u64,
    /// Time since the run started (tokio's clock).
    pub elapsed: Duration,
}

impl Progress {
    /// Finished items per second since the start; 0 before any time has passed.
    pub fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    /// The estimated time to finish at the rate so far; `None` when the total is unknown or
    /// no rate is known yet.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        let rate = self.per_second();
        if rate <= 0.0 {
            return None;
        }
        let left = total.saturating_sub(self.done) as f64;
        Duration::try_from_secs_f64(left / rate).ok()
    }

    /// `done / total` in `[0, 1]`; `None` when the total is unknown.
    pub fn fraction(&self) -> Option<f64> {
        let total = self.total?;
        if total == 0 {
            return Some(1.0);
        }
        Some((self.done as f64 / total as f64).min(1.0))
    }
}

/// Why a run stopped before every item was processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The run's [`CancellationToken`](tokio_util::sync::CancellationToken) was cancelled.
    Cancelled,
    /// An item failed and [`Batch::stop_on_error`](crate::Batch::stop_on_error) was set.
    FirstError {
        /// The input position of the item that failed.
        index: usize,
    },
}

/// Something a batch run reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BatchEvent {
    /// An item's attempt failed and will be tried again after `delay`.
    Retrying {
        /// The item's input position.
        index: usize,
        /// Attempts made so far, the failed one included.
        attempt: u32,
        /// The wait before the next attempt (from the run's `Backoff`).
        delay: Duration,
    },
    /// An item failed for good: its last attempt failed and no retry is left.
    ItemFailed {
        /// The item's input position.
        index: usize,
        /// Attempts made.
        attempts: u32,
    },
    /// A group of items set with [`Batch::on_batch`](crate::Batch::on_batch) has finished.
    BatchCompleted {
        /// The group's number, from 0.
        batch: usize,
        /// Items of the group that succeeded.
        succeeded: usize,
        /// Items of the group that failed.
        failed: usize,
    },
    /// An item finished; sent after every item, in completion order.
    Progress(Progress),
    /// The run stopped early; in-flight items are being cancelled.
    Stopped(StopReason),
    /// The run is over.
    Finished {
        /// The last progress: how many items, in how long.
        progress: Progress,
        /// Why it stopped early, if it did.
        stopped: Option<StopReason>,
    },
}

impl Event for BatchEvent {
    fn component(&self) -> &'static str {
        "batch"
    }

    fn kind(&self) -> &'static str {
        match self {
            BatchEvent::Retrying { .. } => "retrying",
            BatchEvent::ItemFailed { .. } => "item_failed",
            BatchEvent::BatchCompleted { .. } => "batch_completed",
            BatchEvent::Progress(_) => "progress",
            BatchEvent::Stopped(_) => "stopped",
            BatchEvent::Finished { .. } => "finished",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            BatchEvent::Retrying { delay, .. } => record(Reading::histogram(
                "palisade_batch_retry_delay_seconds",
                delay.as_secs_f64(),
            )),
            BatchEvent::Progress(progress) | BatchEvent::Finished { progress, .. } => {
                record(Reading::gauge(
                    "palisade_batch_items_done",
                    progress.done as f64,
                ));
                record(Reading::gauge(
                    "palisade_batch_items_per_second",
                    progress.per_second(),
                ));
            }
            BatchEvent::ItemFailed { .. }
            | BatchEvent::BatchCompleted { .. }
            | BatchEvent::Stopped(_) => {}
        }
    }
}
