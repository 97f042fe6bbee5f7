//! What a retry layer reports to its [`Listener`](palisade_core::Listener).

use std::time::Duration;

use palisade_core::event::{Event, Reading};

/// Something a retry layer reports. Calls that succeed at the first attempt report nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryEvent {
    /// An attempt failed and another one is scheduled after `delay`.
    Retrying {
        /// The number of the attempt about to be made (2 for the first retry).
        attempt: u32,
        /// The wait before it: the backoff's delay or the server's retry-after.
        delay: Duration,
    },
    /// An attempt ran longer than the hedge delay, and a hedge (attempt number `attempt`)
    /// was sent beside it; the first success wins.
    Hedged {
        /// The number of the hedge attempt.
        attempt: u32,
    },
    /// An attempt failed and would have been retried, but the retry budget is spent; its
    /// outcome is returned.
    BudgetExhausted {
        /// The attempts made.
        attempts: u32,
    },
    /// An attempt failed and no retry follows: the attempts, the backoff's limits or the
    /// deadline are used up, or the request cannot be sent again. Its outcome is returned.
    GaveUp {
        /// The attempts made.
        attempts: u32,
    },
}

impl Event for RetryEvent {
    fn component(&self) -> &'static str {
        "retry"
    }

    fn kind(&self) -> &'static str {
        match self {
            RetryEvent::Retrying { .. } => "retrying",
            RetryEvent::Hedged { .. } => "hedged",
            RetryEvent::BudgetExhausted { .. } => "budget_exhausted",
            RetryEvent::GaveUp { .. } => "gave_up",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            RetryEvent::Retrying { delay, .. } => record(Reading::histogram(
                "palisade_retry_delay_seconds",
                delay.as_secs_f64(),
            )),
            RetryEvent::BudgetExhausted { attempts } | RetryEvent::GaveUp { attempts } => record(
                Reading::histogram("palisade_retry_failed_call_attempts", f64::from(*attempts)),
            ),
            RetryEvent::Hedged { .. } => {}
        }
    }
}
