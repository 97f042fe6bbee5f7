//! The shutdown layer.

use std::sync::Arc;
use std::time::Duration;

use palisade_core::reject::ShuttingDown;
use tower_layer::Layer;

use crate::event::ShutdownEvent;
use crate::phase::Phase;
use crate::service::ShutdownService;
use crate::shutdown::Shutdown;
use crate::state::State;

/// What a shutdown layer does with new requests once the shutdown is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    /// The first phase (as its number) in which new requests are rejected.
    pub(crate) reject_from: u8,
    pub(crate) retry_after: Option<Duration>,
}

impl Admission {
    pub(crate) const SERVE: Self = Self {
        reject_from: Phase::Cancelling as u8,
        retry_after: None,
    };

    pub(crate) fn reject_while_draining(self) -> Self {
        Self {
            reject_from: Phase::StopAccepting as u8,
            ..self
        }
    }

    pub(crate) fn retry_after(self, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..self
        }
    }

    /// Records a rejection and makes its error.
    #[cold]
    pub(crate) fn reject(&self, state: &State) -> ShuttingDown {
        let phase = state.phase();
        tracing::debug!(phase = phase.as_str(), "request rejected: shutting down");
        state.emit(&ShutdownEvent::Rejected { phase });
        match self.retry_after {
            Some(delay) => ShuttingDown::new().with_retry_after(delay),
            None => ShuttingDown::new(),
        }
    }
}

/// Wraps services in a [`ShutdownService`], which counts each request as in flight until its
/// response future completes, so the drain waits for it; made by [`Shutdown::layer`] or
/// [`ShutdownLayer::new`].
///
/// - **Running**: requests go straight through. The cost is a relaxed load of the phase and
///   a plain increment of a counter only the calling thread writes (and its decrement when
///   the call completes, an atomic add if that happens on another thread): no lock, no
///   allocation, no shared read-modify-write.
/// - **From the trigger until the deadline**: requests are still served by default, since
///   load balancers may still send traffic during the grace delay and keep-alive
///   connections may carry more requests during the drain; with
///   [`reject_while_draining`](Self::reject_while_draining) they are rejected with
///   [`ShuttingDown`] from [`Phase::StopAccepting`] on.
/// - **At the deadline**: calls still pending fail with [`ShuttingDown`] (the inner future is
///   dropped) and new calls are rejected.
///
/// Errors are boxed: the inner service's as they are, and rejections as [`ShuttingDown`],
/// which [`Rejection::find`](palisade_core::Rejection::find) recognises. For HTTP, where a
/// request lasts until its response **body** ends, use `HttpShutdownLayer` (feature `http`).
///
/// A call that was already pending when the shutdown was triggered and is not polled again
/// before the deadline cannot be woken by the layer; it is cut when it is next polled, or
/// when the server closes its connection.
#[derive(Clone)]
pub struct ShutdownLayer {
    state: Arc<State>,
    admission: Admission,
}

impl ShutdownLayer {
    /// A layer tracking requests for `shutdown`, serving new requests until the deadline.
    pub fn new(shutdown: &Shutdown) -> Self {
        Self {
            state: Arc::clone(&shutdown.state),
            admission: Admission::SERVE,
        }
    }

    /// Rejects new requests with [`ShuttingDown`] from [`Phase::StopAccepting`] on, instead
    /// of serving them until the deadline.
    #[must_use]
    pub fn reject_while_draining(mut self) -> Self {
        self.admission = self.admission.reject_while_draining();
        self
    }

    /// Rejections carry this retry-after (none by default: another instance can take the
    /// request at once).
    #[must_use]
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.admission = self.admission.retry_after(retry_after);
        self
    }
}

impl std::fmt::Debug for ShutdownLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownLayer")
            .field("admission", &self.admission)
            .field("state", &self.state)
            .finish()
    }
}

impl<S> Layer<S> for ShutdownLayer {
    type Service = ShutdownService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShutdownService::new(inner, Arc::clone(&self.state), self.admission)
    }
}
