//! What an emit reports: every handler's outcome.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::BoxError;

use crate::subscription::{HandlerId, HandlerInfo};

/// How one handler's call of one event ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandlerOutcome {
    /// The handler returned `Ok` (or `()`).
    Ok,
    /// The handler returned an error (or, for a service, failed its readiness check).
    Failed(BoxError),
    /// The handler panicked; the panic was caught. The message is the panic's, or
    /// `"<non-string panic payload>"`.
    Panicked(String),
    /// The handler did not finish within its timeout and was dropped (cancelled).
    TimedOut(Duration),
    /// The handler's subscription ended after the emit began and before the handler was
    /// called (a `once` handler that another emit fired, a subscription dropped by an
    /// earlier handler of a serial emit): it was not called.
    Unsubscribed,
}

impl HandlerOutcome {
    /// The outcome without its payload.
    pub fn status(&self) -> HandlerStatus {
        match self {
            HandlerOutcome::Ok => HandlerStatus::Ok,
            HandlerOutcome::Failed(_) => HandlerStatus::Failed,
            HandlerOutcome::Panicked(_) => HandlerStatus::Panicked,
            HandlerOutcome::TimedOut(_) => HandlerStatus::TimedOut,
            HandlerOutcome::Unsubscribed => HandlerStatus::Unsubscribed,
        }
    }

    /// Whether the handler failed, panicked or timed out.
    pub fn is_failure(&self) -> bool {
        self.status().is_failure()
    }
}

impl fmt::Display for HandlerOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerOutcome::Ok => f.write_str("ok"),
            HandlerOutcome::Failed(error) => write!(f, "failed: {error}"),
            HandlerOutcome::Panicked(message) => write!(f, "panicked: {message}"),
            HandlerOutcome::TimedOut(timeout) => write!(f, "timed out after {timeout:?}"),
            HandlerOutcome::Unsubscribed => f.write_str("unsubscribed before it was called"),
        }
    }
}

/// A [`HandlerOutcome`] without its payload, for counting and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandlerStatus {
    /// See [`HandlerOutcome::Ok`].
    Ok,
    /// See [`HandlerOutcome::Failed`].
    Failed,
    /// See [`HandlerOutcome::Panicked`].
    Panicked,
    /// See [`HandlerOutcome::TimedOut`].
    TimedOut,
    /// See [`HandlerOutcome::Unsubscribed`].
    Unsubscribed,
}

impl HandlerStatus {
    /// Whether this is a failure, a panic or a timeout.
    pub const fn is_failure(self) -> bool {
        matches!(
            self,
            HandlerStatus::Failed | HandlerStatus::Panicked | HandlerStatus::TimedOut
        )
    }

    /// The status's snake_case name: `"ok"`, `"failed"`, `"panicked"`, `"timed_out"`,
    /// `"unsubscribed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            HandlerStatus::Ok => "ok",
            HandlerStatus::Failed => "failed",
            HandlerStatus::Panicked => "panicked",
            HandlerStatus::TimedOut => "timed_out",
            HandlerStatus::Unsubscribed => "unsubscribed",
        }
    }
}

impl fmt::Display for HandlerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The handlers an emit ran on, in registration order.
pub(crate) trait HandlerList: Send + Sync {
    fn len(&self) -> usize;
    fn info(&self, index: usize) -> &HandlerInfo;
}

static OK: HandlerOutcome = HandlerOutcome::Ok;

/// Every handler's outcome for one event, from [`EventBus::emit`](crate::EventBus::emit)
/// and [`emit_serial`](crate::EventBus::emit_serial).
///
/// It lists the handlers subscribed when the emit began, in registration order (typed and
/// `on_any` handlers alike). All failures are kept, not just the first.
/// [`into_result`](Self::into_result) turns a report with failures into an error, for `?`.
pub struct EmitReport {
    event: &'static str,
    handlers: Arc<dyn HandlerList>,
    // Every outcome other than `Ok`, by handler index, sorted.
    exceptions: Vec<(usize, HandlerOutcome)>,
}

impl EmitReport {
    pub(crate) fn new(
        event: &'static str,
        handlers: Arc<dyn HandlerList>,
        mut exceptions: Vec<(usize, HandlerOutcome)>,
    ) -> Self {
        exceptions.sort_unstable_by_key(|(index, _)| *index);
        Self {
            event,
            handlers,
            exceptions,
        }
    }

    /// The event's [`Event::NAME`](crate::Event::NAME).
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// How many handlers the report covers (the subscribers when the emit began).
    pub fn len(&self) -> usize {
        self.handlers.len()
    }

    /// Whether the event had no handler at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many handlers were called (all but the [`Unsubscribed`](HandlerOutcome::Unsubscribed)).
    pub fn called(&self) -> usize {
        self.len() - self.count(HandlerStatus::Unsubscribed)
    }

    /// How many handlers ended with `status`.
    pub fn count(&self, status: HandlerStatus) -> usize {
        if status == HandlerStatus::Ok {
            return self.len() - self.exceptions.len();
        }
        self.exceptions
            .iter()
            .filter(|(_, outcome)| outcome.status() == status)
            .count()
    }

    /// Whether no handler failed, panicked or timed out.
    pub fn is_ok(&self) -> bool {
        !self.exceptions.iter().any(|(_, o)| o.is_failure())
    }

    /// Every handler's outcome, in registration order.
    pub fn outcomes(&self) -> impl ExactSizeIterator<Item = HandlerReport<'_>> + '_ {
        let mut exceptions = self.exceptions.iter().peekable();
        (0..self.handlers.len()).map(move |index| {
            let outcome = match exceptions.next_if(|(i, _)| *i == index) {
                Some((_, outcome)) => outcome,
                None => &OK,
            };
            HandlerReport {
                info: self.handlers.info(index),
                outcome,
            }
        })
    }

    /// The handlers that failed, panicked or timed out, in registration order.
    pub fn failures(&self) -> impl Iterator<Item = HandlerReport<'_>> + '_ {
        self.exceptions
            .iter()
            .filter(|(_, outcome)| outcome.is_failure())
            .map(|(index, outcome)| HandlerReport {
                info: self.handlers.info(*index),
                outcome,
            })
    }

    /// The outcome of the handler `id`, if it is in the report.
    pub fn outcome(&self, id: HandlerId) -> Option<&HandlerOutcome> {
        self.outcomes()
            .find(|report| report.id() == id)
            .map(|report| report.outcome)
    }

    /// `Ok(self)` if no handler failed, panicked or timed out.
    ///
    /// # Errors
    ///
    /// An [`EmitError`] holding the report when any did.
    pub fn into_result(self) -> Result<Self, EmitError> {
        if self.is_ok() {
            Ok(self)
        } else {
            Err(EmitError { report: self })
        }
    }
}

impl fmt::Debug for EmitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmitReport")
            .field("event", &self.event)
            .field("outcomes", &self.outcomes().collect::<Vec<_>>())
            .finish()
    }
}

/// One handler's line in an [`EmitReport`].
#[derive(Clone, Copy)]
pub struct HandlerReport<'a> {
    info: &'a HandlerInfo,
    outcome: &'a HandlerOutcome,
}

impl<'a> HandlerReport<'a> {
    /// The handler's id (see [`Subscription::id`](crate::Subscription::id)).
    pub fn id(&self) -> HandlerId {
        self.info.id
    }

    /// The handler's name: the one given at subscription, or its type's name.
    pub fn name(&self) -> &'a str {
        &self.info.name
    }

    /// How the call ended.
    pub fn outcome(&self) -> &'a HandlerOutcome {
        self.outcome
    }

    /// How the call ended, without the payload.
    pub fn status(&self) -> HandlerStatus {
        self.outcome.status()
    }
}

impl fmt::Debug for HandlerReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerReport")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl fmt::Display for HandlerReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.name(), self.id(), self.outcome)
    }
}

/// Some handlers of an event failed, panicked or timed out; from
/// [`EmitReport::into_result`]. It holds the whole report.
pub struct EmitError {
    report: EmitReport,
}

impl EmitError {
    /// The report.
    pub fn report(&self) -> &EmitReport {
        &self.report
    }

    /// The report, by value.
    pub fn into_report(self) -> EmitReport {
        self.report
    }
}

impl fmt::Debug for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EmitError").field(&self.report).finish()
    }
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 3;
        let failed = self.report.failures().count();
        write!(
            f,
            "{failed} of {} handlers of `{}` failed",
            self.report.called(),
            self.report.event
        )?;
        for (n, failure) in self.report.failures().take(SHOWN).enumerate() {
            f.write_str(if n == 0 { ": " } else { "; " })?;
            write!(f, "{failure}")?;
        }
        if failed > SHOWN {
            write!(f, "; and {} more", failed - SHOWN)?;
        }
        Ok(())
    }
}

impl Error for EmitError {
    /// The first handler error, if the first failure is an error (not a panic or timeout).
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self.report.failures().next()?.outcome {
            HandlerOutcome::Failed(error) => Some(&**error),
            _ => None,
        }
    }
}
