//! The retry service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::classify::{Classify, DefaultClassify};
use palisade_core::event::Listener;
use tokio::time::Instant;
use tower_service::Service;

use crate::budget::Budget;
use crate::config::{HEDGE_WINDOW, HedgeKind, RetryConfig};
use crate::event::RetryEvent;
use crate::future::ResponseFuture;
use crate::latency::Latencies;
use crate::replay::{CloneRequest, Replay};

/// What one layer's services share: configuration, strategies, the budget.
pub(crate) struct Shared<C, P> {
    pub(crate) config: RetryConfig,
    pub(crate) classify: C,
    pub(crate) replay: P,
    pub(crate) budget: Option<Budget>,
    /// Recent latencies, when hedging follows a percentile of them.
    pub(crate) latencies: Option<Latencies>,
    /// Whether a call reads the clock when it starts, classifier aside (see
    /// `ResponseFuture::new`).
    pub(crate) needs_clock: bool,
    /// Whether a call keeps a copy of its request to send again (more than one attempt).
    pub(crate) resend: bool,
    /// Whether calls record their latencies (`latencies` is set).
    pub(crate) records_latencies: bool,
    /// Whether attempts are hedged.
    pub(crate) hedges: bool,
    /// What response futures count their start from.
    pub(crate) base: Instant,
}

impl<C, P> Shared<C, P> {
    pub(crate) fn new(config: RetryConfig, classify: C, replay: P) -> Self {
        let latencies = match config.hedge.map(|hedge| hedge.kind) {
            Some(HedgeKind::Percentile {
                percentile,
                fallback,
            }) => Some(Latencies::new(percentile, fallback, HEDGE_WINDOW)),
            _ => None,
        };
        let timed = config.attempt_timeout.is_some() || config.deadline.is_some();
        let needs_clock = timed || config.backoff.max_elapsed().is_some() || config.hedge.is_some();
        Self {
            budget: config.budget.map(Budget::new),
            needs_clock,
            resend: config.max_attempts.get() > 1,
            records_latencies: latencies.is_some(),
            hedges: config.hedge.is_some(),
            base: Instant::now(),
            latencies,
            config,
            classify,
            replay,
        }
    }

    /// How long an attempt runs before it is hedged, if hedging is on.
    #[inline]
    pub(crate) fn hedge_delay(&self) -> Option<Duration> {
        match self.config.hedge?.kind {
            HedgeKind::After(delay) => Some(delay),
            HedgeKind::Percentile { .. } => self.latencies.as_ref().map(Latencies::delay),
        }
    }

    pub(crate) fn emit(&self, event: RetryEvent) {
        if let Some(listener) = &self.config.listener {
            listener.on_event(&event);
        }
    }
}

/// A service whose failed calls are retried; built by [`RetryLayer`](crate::RetryLayer).
///
/// Errors are boxed: the inner service's errors as they are, plus
/// [`AttemptTimedOut`](crate::AttemptTimedOut) and [`DeadlineExceeded`](crate::DeadlineExceeded)
/// when those limits are set. The classifier sees the boxed error.
///
/// Readiness: `poll_ready` is the inner service's. `call` sends the first attempt on the
/// service it made ready and moves that service into the response future (leaving a clone
/// in its place, which must be made ready again, as the tower contract requires); every
/// retry polls that service's `poll_ready` before calling it.
pub struct Retry<S, C = DefaultClassify, P = CloneRequest> {
    inner: S,
    shared: Arc<Shared<C, P>>,
}

impl<S, C, P> Retry<S, C, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, P>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the retry service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C, P> Clone for Retry<S, C, P> {
    /// The clone shares the retry budget.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: std::fmt::Debug, C, P> std::fmt::Debug for Retry<S, C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S, C, P, Request> Service<Request> for Retry<S, C, P>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    P: Replay<Request, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request, C, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture::new(ready, request, Arc::clone(&self.shared))
    }
}
