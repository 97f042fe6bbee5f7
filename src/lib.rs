//! Palisade: the production patterns async Rust services end up hand-writing, as tower layers
//! and companion crates that stay correct under failure.
//!
//! This facade re-exports the suite's crates, one feature per crate, so that one dependency
//! brings what an application needs:
//!
//! ```toml
//! [dependencies]
//! palisade = { version = "0.1", features = ["full"] }
//! ```
//!
//! | feature | crate | what it gives |
//! |---|---|---|
//! | `core` (default) | [`palisade_core`](crate::core) | `Backoff` + `Jitter`, `Classify`, typed rejections with `RetryAfter`, the event/metrics hook |
//! | `batch` | [`palisade_batch`](crate::batch) | `Batch`: a continuous pool with per-item retry and timeout, a report of every outcome, progress, cancellation; an RFC 4180 async CSV reader |
//! | `batch-progress` | | an indicatif progress bar for batches |
//! | `batch-gzip` | | gzip output for CSV pipelines |
//! | `breaker` | [`palisade_breaker`](crate::breaker) | `CircuitBreakerLayer`: count/time windows, slow calls, exact half-open probes |
//! | `events` | [`palisade_events`](crate::events) | a typed in-process event bus: concurrent handlers (closures or tower services), every outcome reported, a bounded publish queue with dead letters |
//! | `nats` | | the event bus across processes over NATS |
//! | `jobs` | [`palisade_jobs`](crate::jobs) | a durable job queue (SQLite by default): typed jobs, handlers as tower services, fenced leases, retries, a dead-letter queue |
//! | `jobs-postgres` | | the job queue's PostgreSQL backend |
//! | `lock` | [`palisade_lock`](crate::lock) | locks with fencing tokens, a renewing watchdog and `lost()`; in-process by default |
//! | `lock-redis`, `lock-postgres` | | the lock's Redis + Redlock and PostgreSQL advisory-lock backends |
//! | `pool` | [`palisade_pool`](crate::pool) | `ConcurrencyPoolLayer`: a limit with a priority wait queue, load shedding, permits held until the response body ends |
//! | `rate-limit` | [`palisade_ratelimit`](crate::rate_limit) | `RateLimitLayer`: GCRA (default), token bucket, sliding windows, fixed window; reject or wait; 429 + `RateLimit` headers |
//! | `rate-limit-redis` | | cluster-wide rate limits on Redis: `RedisRateLimiter`, and `RedisRateLimitLayer` in front of any service |
//! | `retry` | [`palisade_retry`](crate::retry) | `RetryLayer`: core backoff, `Retry-After`, a shared retry budget, per-attempt timeouts and deadlines |
//! | `shutdown` | [`palisade_shutdown`](crate::shutdown) | the `Shutdown` coordinator (phases, drain deadline, cleanup hooks, exit code), `ShutdownLayer`, a health endpoint |
//! | `signal` | | SIGTERM / SIGINT trigger a `Shutdown` |
//! | `serve` | | `shutdown::serve`: hyper-util HTTP/1 + HTTP/2 serving with a graceful drain |
//! | `upload` | [`palisade_upload`](crate::upload) | resumable uploads on tus 1.0: a server (a tower service) and a client that resumes by content hash |
//! | `upload-rustls` | | `https://` for the upload client |
//! | `ws` | [`palisade_ws`](crate::ws) | a WebSocket client that reconnects with backoff, detects dead peers, and reports every dropped message |
//! | `ws-json`, `ws-rustls` | | typed JSON messages; `wss://` |
//! | `http` | | HTTP classifiers and 429/503 rejection responses; body-aware shutdown tracking |
//! | `metrics` | | a listener that records events through the `metrics` facade |
//! | `full` | | everything above |
//!
//! [`prelude`] brings [`ServiceBuilderExt`] (one `ServiceBuilder` method per layer: `shutdown`,
//! `rate_limiter`, `keyed_rate_limiter`, `redis_rate_limiter` (with `rate-limit-redis`),
//! `concurrency_pool`, `circuit_breaker`, `retry_with`, and with `http` their variants that
//! answer with `429` / `503` responses: `http_shutdown`, `http_rate_limiter`,
//! `http_keyed_rate_limiter`, `http_redis_rate_limiter`, `http_concurrency_pool`,
//! `http_circuit_breaker`, `http_retry`) and the types most programs name.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "core")]
//! # fn main() -> Result<(), palisade::core::backoff::BackoffError> {
//! use std::time::Duration;
//! use palisade::core::{Backoff, Jitter};
//!
//! let backoff = Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(2))?
//!     .with_jitter(Jitter::Equal);
//! for delay in backoff.delays().take(5) {
//!     assert!(delay <= Duration::from_secs(2));
//! }
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "core"))]
//! # fn main() {}
//! ```

mod builder;
pub mod prelude;

pub use crate::builder::ServiceBuilderExt;

#[cfg(feature = "core")]
#[doc(inline)]
pub use palisade_core as core;

#[cfg(feature = "batch")]
#[doc(inline)]
pub use palisade_batch as batch;

#[cfg(feature = "breaker")]
#[doc(inline)]
pub use palisade_breaker as breaker;

#[cfg(feature = "events")]
#[doc(inline)]
pub use palisade_events as events;

#[cfg(feature = "jobs")]
#[doc(inline)]
pub use palisade_jobs as jobs;

#[cfg(feature = "lock")]
#[doc(inline)]
pub use palisade_lock as lock;

#[cfg(feature = "pool")]
#[doc(inline)]
pub use palisade_pool as pool;

#[cfg(feature = "rate-limit")]
#[doc(inline)]
pub use palisade_ratelimit as rate_limit;

#[cfg(feature = "retry")]
#[doc(inline)]
pub use palisade_retry as retry;

#[cfg(feature = "shutdown")]
#[doc(inline)]
pub use palisade_shutdown as shutdown;

#[cfg(feature = "upload")]
#[doc(inline)]
pub use palisade_upload as upload;

#[cfg(feature = "ws")]
#[doc(inline)]
pub use palisade_ws as ws;
