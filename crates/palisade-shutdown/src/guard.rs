//! Registering long-lived work (WebSocket sessions, SSE streams, background loops, job
//! workers) so that it is told to stop and the drain waits for it.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::state::State;

/// A piece of long-lived work registered with a [`Shutdown`](crate::Shutdown); made by
/// [`Shutdown::guard`](crate::Shutdown::guard).
///
/// While the guard lives the drain waits for it. It hears two things:
///
/// - [`stopping`](Self::stopping): the drain has begun; finish what you are doing (close the
///   WebSocket with a going-away frame, end the SSE stream, put the job back), then drop the
///   guard.
/// - [`cancelled`](Self::cancelled): the drain deadline has passed (or the stop was forced);
///   give up now. The coordinator waits only a short
///   [cancel grace](crate::ShutdownBuilder::cancel_grace) more.
///
/// Dropping the guard tells the coordinator the work is done.
///
/// ```
/// use std::time::Duration;
/// use palisade_shutdown::Shutdown;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let shutdown = Shutdown::builder().build();
/// let guard = shutdown.guard();
/// let worker = tokio::spawn(async move {
///     let mut ticks = 0;
///     loop {
///         tokio::select! {
///             () = guard.stopping() => break ticks,
///             () = tokio::time::sleep(Duration::from_secs(1)) => ticks += 1,
///         }
///     }
///     // `guard` is dropped here: the drain stops waiting for this worker.
/// });
///
/// tokio::time::sleep(Duration::from_millis(3500)).await;
/// shutdown.trigger();
/// let report = shutdown.run().await.unwrap();
/// assert_eq!(worker.await.unwrap(), 3);
/// assert_eq!(report.tasks_at_drain, 1);
/// assert!(report.is_clean());
/// # }
/// ```
pub struct ShutdownGuard {
    state: Arc<State>,
    tracked: bool,
}

impl ShutdownGuard {
    pub(crate) fn new(state: Arc<State>) -> Self {
        let tracked = state.register_task();
        Self { state, tracked }
    }

    /// Resolves when the drain begins (at once if it already has).
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + '_ {
        self.state.stop.cancelled()
    }

    /// Resolves at the drain deadline, or at once on a forced stop (at once if that has
    /// already happened).
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + '_ {
        self.state.cancel.cancelled()
    }

    /// Whether the drain has begun.
    pub fn is_stopping(&self) -> bool {
        self.state.stop.is_cancelled()
    }

    /// Whether the deadline has passed or the stop was forced.
    pub fn is_cancelled(&self) -> bool {
        self.state.cancel.is_cancelled()
    }

    /// A token cancelled when the drain begins, for APIs that take a
    /// [`CancellationToken`].
    pub fn stop_token(&self) -> CancellationToken {
        self.state.stop.clone()
    }

    /// A token cancelled at the drain deadline or on a forced stop.
    pub fn cancel_token(&self) -> CancellationToken {
        self.state.cancel.clone()
    }

    /// Whether the drain waits for this guard. A guard made after the drain finished
    /// tracks nothing (and is told to stop at once).
    pub fn is_tracked(&self) -> bool {
        self.tracked
    }
}

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        if self.tracked {
            self.state.unregister_task();
        }
    }
}

impl std::fmt::Debug for ShutdownGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownGuard")
            .field("tracked", &self.is_tracked())
            .field("stopping", &self.is_stopping())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
