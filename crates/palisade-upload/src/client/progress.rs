//! Progress reports of an upload.

use std::time::Duration;

/// Where an upload stands, reported after every committed chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Bytes the server holds.
    pub bytes: u64,
    /// The file's size.
    pub total: u64,
    /// Bytes sent and committed by this run (a resumed run starts at zero).
    pub sent: u64,
    /// Bytes the server already held when this run started (zero for a fresh upload): a
    /// resumed upload reports where it resumed. [`speed`](Self::speed) and
    /// [`eta`](Self::eta) count only this run's bytes, not these.
    pub resumed_from: u64,
    /// Time since this run started.
    pub elapsed: Duration,
    /// The chunk just committed, from 1.
    pub chunk: u64,
    /// How many chunks the whole file has.
    pub chunks: u64,
}

impl Progress {
    /// Percent done, 0 to 100 (100 for an empty file).
    #[must_use]
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            self.bytes as f64 * 100.0 / self.total as f64
        }
    }

    /// Bytes per second sent by this run.
    #[must_use]
    pub fn speed(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.sent as f64 / secs
        } else {
            0.0
        }
    }

    /// The time left at the current speed; `None` before anything was sent.
    #[must_use]
    pub fn eta(&self) -> Option<Duration> {
        let speed = self.speed();
        if speed <= 0.0 {
            return None;
        }
        Duration::try_from_secs_f64(self.total.saturating_sub(self.bytes) as f64 / speed).ok()
    }
}
