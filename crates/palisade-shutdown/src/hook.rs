//! Cleanup hooks: what runs after the drain (close the database pool, flush the cache and
//! the logs), each within its own timeout, each isolated from the others' failures.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::BoxError;

type HookFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
type HookFn = Box<dyn FnOnce() -> HookFuture + Send>;

/// A named cleanup step, run once after the drain; see [`ShutdownBuilder::hook`](crate::ShutdownBuilder::hook).
///
/// ```
/// use std::time::Duration;
/// use palisade_shutdown::Hook;
///
/// let hook = Hook::new("database", || async {
///     // pool.close().await;
///     Ok::<_, std::io::Error>(())
/// })
/// .timeout(Duration::from_secs(10));
/// assert_eq!(hook.name(), "database");
/// ```
pub struct Hook {
    name: Cow<'static, str>,
    timeout: Duration,
    run: HookFn,
}

impl Hook {
    /// A hook's timeout unless [set](Self::timeout): **5 s**.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A hook named `name` (for the report, events and logs) that runs `f` and awaits the
    /// future it returns. An `Err` counts as a failure; so does a panic, in `f` or in its
    /// future. Either way the next hook still runs.
    pub fn new<F, Fut, E>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self {
            name: name.into(),
            timeout: Self::DEFAULT_TIMEOUT,
            run: Box::new(move || {
                let future = f();
                Box::pin(async move { future.await.map_err(Into::into) })
            }),
        }
    }

    /// How long the hook may take before it is abandoned and reported as timed out.
    /// Default: 5 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The hook's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hook's timeout.
    pub fn time_limit(&self) -> Duration {
        self.timeout
    }

    /// Runs the hook within its timeout, catching panics; never panics itself.
    pub(crate) async fn run(self) -> (Cow<'static, str>, HookOutcome) {
        let Hook { name, timeout, run } = self;
        let outcome = match catch_unwind(AssertUnwindSafe(run)) {
            Err(panic) => HookOutcome::Panicked(panic_message(panic.as_ref())),
            Ok(future) => match tokio::time::timeout(timeout, CatchUnwind(future)).await {
                Err(_elapsed) => HookOutcome::TimedOut(timeout),
                Ok(Err(panic)) => HookOutcome::Panicked(panic),
                Ok(Ok(Err(error))) => HookOutcome::Failed(error.to_string()),
                Ok(Ok(Ok(()))) => HookOutcome::Completed,
            },
        };
        (name, outcome)
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Polls a hook's future, turning a panic into an `Err` with the panic's message.
struct CatchUnwind(HookFuture);

impl Future for CatchUnwind {
    type Output = Result<Result<(), BoxError>, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(panic) => Poll::Ready(Err(panic_message(panic.as_ref()))),
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// How one hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookOutcome {
    /// It returned `Ok`.
    Completed,
    /// It returned an `Err`; the error's message.
    Failed(String),
    /// It did not finish within its timeout (given) and was abandoned.
    TimedOut(Duration),
    /// It panicked; the panic's message.
    Panicked(String),
    /// A forced stop interrupted it.
    Interrupted,
    /// A forced stop came before it could start: it never ran.
    Skipped,
}

impl HookOutcome {
    /// Whether the hook completed.
    pub const fn is_completed(&self) -> bool {
        matches!(self, HookOutcome::Completed)
    }

    /// A short snake_case name: `"completed"`, `"failed"`, `"timed_out"`, `"panicked"`,
    /// `"interrupted"`, `"skipped"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            HookOutcome::Completed => "completed",
            HookOutcome::Failed(_) => "failed",
            HookOutcome::TimedOut(_) => "timed_out",
            HookOutcome::Panicked(_) => "panicked",
            HookOutcome::Interrupted => "interrupted",
            HookOutcome::Skipped => "skipped",
        }
    }
}

impl fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookOutcome::Completed => f.write_str("completed"),
            HookOutcome::Failed(error) => write!(f, "failed: {error}"),
            HookOutcome::TimedOut(limit) => write!(f, "timed out after {limit:?}"),
            HookOutcome::Panicked(message) => write!(f, "panicked: {message}"),
            HookOutcome::Interrupted => f.write_str("interrupted by a forced stop"),
            HookOutcome::Skipped => f.write_str("skipped by a forced stop"),
        }
    }
}

/// One hook's line in the [`ShutdownReport`](crate::ShutdownReport).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HookReport {
    /// The hook's name.
    pub name: Cow<'static, str>,
    /// How it ended.
    pub outcome: HookOutcome,
    /// How long it ran (zero for a skipped hook).
    pub elapsed: Duration,
}
