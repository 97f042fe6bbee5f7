//! The rate limit layer, and the state its services share.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::Listener;
use tower_layer::Layer;

use crate::config::RateLimitConfig;
use crate::decision::{Refusal, Snapshot};
use crate::event::RateLimitEvent;
use crate::handle::RateLimitHandle;
use crate::limiter::Limiter;
use crate::queue::Queue;
use crate::respond::{RaiseError, UnitCost};
use crate::service::RateLimit;

/// What every service of one layer shares: the limiter, the wait queue, the settings.
pub(crate) struct Shared {
    pub(crate) limiter: Limiter,
    pub(crate) queue: Queue,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) report: Report,
}

impl Shared {
    fn new(config: RateLimitConfig) -> Self {
        let limiter = Limiter::new(config.quota, config.algorithm, &config.clock)
            .unwrap_or_else(|_| unreachable!("a built configuration is valid"));
        Self {
            limiter,
            queue: Queue::default(),
            max_wait: config.max_wait,
            report: Report {
                name: config.name,
                listener: config.listener,
            },
        }
    }

    #[inline]
    pub(crate) fn admitted(&self, cost: u32, snapshot: &Snapshot) {
        self.report.admitted(cost, snapshot);
    }

    pub(crate) fn waited(&self, cost: u32, waited: Duration, snapshot: &Snapshot) {
        self.report.waited(cost, waited, snapshot);
    }

    pub(crate) fn refused(&self, cost: u32, refusal: &Refusal, waited: Duration) {
        self.report.refused(cost, refusal, waited);
    }

    pub(crate) fn name(&self) -> &str {
        &self.report.name
    }
}

/// Where a limiter reports: its name in traces, and its listener.
pub(crate) struct Report {
    pub(crate) name: Cow<'static, str>,
    pub(crate) listener: Option<Arc<dyn Listener<RateLimitEvent>>>,
}

impl Report {
    #[inline]
    pub(crate) fn event(&self, event: &RateLimitEvent) {
        if let Some(listener) = &self.listener {
            listener.on_event(event);
        }
    }

    #[inline]
    pub(crate) fn admitted(&self, cost: u32, snapshot: &Snapshot) {
        if let Some(listener) = &self.listener {
            listener.on_event(&RateLimitEvent::Admitted {
                cost,
                snapshot: *snapshot,
            });
        }
    }

    pub(crate) fn waited(&self, cost: u32, waited: Duration, snapshot: &Snapshot) {
        tracing::debug!(name = %self.name, cost, ?waited, "rate limit: admitted after waiting");
        if let Some(listener) = &self.listener {
            listener.on_event(&RateLimitEvent::Waited {
                cost,
                waited,
                snapshot: *snapshot,
            });
        }
    }

    pub(crate) fn refused(&self, cost: u32, refusal: &Refusal, waited: Duration) {
        let event = match refusal {
            Refusal::Limited(limited) => {
                tracing::debug!(
                    name = %self.name,
                    cost,
                    retry_after = ?limited.retry_after(),
                    ?waited,
                    "rate limit: request rejected"
                );
                RateLimitEvent::Rejected {
                    cost,
                    retry_after: limited.retry_after(),
                    waited,
                }
            }
            Refusal::InsufficientCapacity(error) => {
                tracing::warn!(
                    name = %self.name,
                    cost,
                    capacity = error.capacity(),
                    "rate limit: request costs more than the limit ever holds"
                );
                RateLimitEvent::TooCostly {
                    cost,
                    capacity: error.capacity(),
                }
            }
            Refusal::KeysExhausted(error) => {
                tracing::debug!(
                    name = %self.name,
                    max_keys = error.max_keys(),
                    "rate limit: key map full, new key refused"
                );
                RateLimitEvent::KeysExhausted {
                    max_keys: error.max_keys(),
                }
            }
            Refusal::StoreUnavailable(_) => {
                tracing::debug!(name = %self.name, "rate limit: store unavailable, failing closed");
                RateLimitEvent::StoreUnavailable {
                    policy: "fail_closed",
                }
            }
        };
        if let Some(listener) = &self.listener {
            listener.on_event(&event);
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.report.name)
            .field("algorithm", &self.limiter.algorithm())
            .field("quota", &self.limiter.quota())
            .field("max_wait", &self.max_wait)
            .field("waiting", &self.queue.len())
            .finish()
    }
}

/// Wraps services in a [`RateLimit`].
///
/// **One layer value is one limiter**: every service it builds, every clone of those
/// services and of the layer, and every [handle](Self::handle) share the same quota. Build
/// one layer per limit.
///
/// `C` is what a request costs ([`UnitCost`]: 1; see [`cost`](Self::cost)); `R` how a
/// refused request is answered ([`RaiseError`]: a boxed `RateLimited`; see
/// [`respond_with`](Self::respond_with)).
pub struct RateLimitLayer<C = UnitCost, R = RaiseError> {
    shared: Arc<Shared>,
    cost: C,
    respond: R,
}

impl RateLimitLayer {
    /// A limiter configured by `config`, or by a [`Quota`](crate::Quota) (GCRA, reject
    /// mode).
    pub fn new(config: impl Into<RateLimitConfig>) -> Self {
        Self {
            shared: Arc::new(Shared::new(config.into())),
            cost: UnitCost,
            respond: RaiseError,
        }
    }
}

impl<C, R> RateLimitLayer<C, R> {
    /// Charges each request what `cost` says: a [`Cost`](crate::Cost), or a closure
    /// `Fn(&Req) -> u32` (give its parameter's type).
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use palisade_ratelimit::{Quota, RateLimitLayer};
    ///
    /// // 1000 bytes per second, charged by the request's length.
    /// let quota = Quota::per_second(NonZeroU32::new(1000).unwrap());
    /// let layer = RateLimitLayer::new(quota).cost(|body: &Vec<u8>| body.len() as u32);
    /// # let _ = layer;
    /// ```
    pub fn cost<D>(self, cost: D) -> RateLimitLayer<D, R> {
        RateLimitLayer {
            shared: self.shared,
            cost,
            respond: self.respond,
        }
    }

    /// Answers refused requests with `respond` (a [`Respond`](crate::Respond)), for example
    /// `TooManyRequests` (feature `http`) for `429` responses.
    pub fn respond_with<Q>(self, respond: Q) -> RateLimitLayer<C, Q> {
        RateLimitLayer {
            shared: self.shared,
            cost: self.cost,
            respond,
        }
    }

    /// A handle to read the limiter and change its quota at runtime.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle::new(Arc::clone(&self.shared))
    }
}

impl<C: Clone, R: Clone> Clone for RateLimitLayer<C, R> {
    /// The clone is the same limiter.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            cost: self.cost.clone(),
            respond: self.respond.clone(),
        }
    }
}

impl<C, R> std::fmt::Debug for RateLimitLayer<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.shared)
            .field("cost", &std::any::type_name::<C>())
            .field("respond", &std::any::type_name::<R>())
            .finish()
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for RateLimitLayer<C, R> {
    type Service = RateLimit<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(
            inner,
            Arc::clone(&self.shared),
            self.cost.clone(),
            self.respond.clone(),
        )
    }
}
