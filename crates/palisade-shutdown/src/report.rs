//! What a shutdown did.

use std::process::ExitCode;
use std::time::Duration;

use crate::hook::HookReport;

/// What a shutdown did, returned by [`Shutdown::run`](crate::Shutdown::run).
///
/// Request counts come from the in-flight counters and are exact when nothing is starting or
/// finishing at the instant they are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// A second trigger (or signal) forced the stop: waits were cut short and the hooks
    /// not yet run were skipped.
    pub forced: bool,
    /// Requests in flight when the drain began.
    pub requests_at_drain: usize,
    /// Registered tasks ([guards](crate::ShutdownGuard)) alive when the drain began.
    pub tasks_at_drain: usize,
    /// Requests still in flight at the deadline (or at a forced stop), which were cancelled.
    pub requests_cancelled: usize,
    /// Tasks still alive at the deadline (or at a forced stop), which were cancelled.
    pub tasks_cancelled: usize,
    /// Requests and tasks still alive after the cancel grace: cut off without finishing.
    pub abandoned: usize,
    /// Each hook's outcome, in the order they ran.
    pub hooks: Vec<HookReport>,
    /// From the trigger to the end of the hooks.
    pub elapsed: Duration,
}

impl ShutdownReport {
    /// Whether everything finished on its own: not forced, nothing cancelled, every hook
    /// completed.
    pub fn is_clean(&self) -> bool {
        !self.forced
            && self.requests_cancelled == 0
            && self.tasks_cancelled == 0
            && self.abandoned == 0
            && self.hooks.iter().all(|hook| hook.outcome.is_completed())
    }

    /// The process exit status this shutdown deserves: **0** when [clean](Self::is_clean),
    /// **1** otherwise (a forced stop, work cut at the deadline, or a hook that failed, timed
    /// out, panicked or was skipped).
    pub fn code(&self) -> u8 {
        u8::from(!self.is_clean())
    }

    /// [`code`](Self::code) as an [`ExitCode`], to return from `main`.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }
}
