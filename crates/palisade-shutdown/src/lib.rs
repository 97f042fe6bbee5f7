//! Graceful shutdown for tower services: drain everything, drop nothing, and never hang.
//!
//! A [`Shutdown`] coordinator takes a process from "serving" to "exited" through fixed,
//! observable [phases](Phase), with a deadline on every wait:
//!
//! 1. **Triggered** by [`Shutdown::trigger`] or, with [`on_signals`](ShutdownBuilder::on_signals)
//!    (feature `signal`), SIGTERM / SIGINT: the [health endpoint](HealthService) answers `503`
//!    at once ([`Phase::Unhealthy`]).
//! 2. An optional **grace delay** while requests are still served, so load balancers take the
//!    instance out of rotation ([`Phase::Grace`]).
//! 3. Servers **stop accepting** connections ([`Phase::StopAccepting`]): `serve` (feature
//!    `serve`) closes its listener, then closes its connections gracefully when the drain
//!    begins and drops the rest at the deadline; another server follows the phases with
//!    [`Shutdown::wait_for`].
//! 4. The **drain** ([`Phase::Draining`]): long-lived work registered through a
//!    [`ShutdownGuard`] is told to stop, and the coordinator waits for it and for every
//!    in-flight request (with feature `http`, until its response **body** ends, SSE and
//!    downloads included), up to the drain deadline (default **30 s**).
//! 5. At the deadline, what remains is **cancelled** ([`Phase::Cancelling`]): guards hear
//!    [`cancelled`](ShutdownGuard::cancelled), pending requests fail with [`ShuttingDown`]
//!    (`503` for HTTP), streaming bodies end with an error, new requests are rejected.
//! 6. **Cleanup hooks** run in order, each within its own timeout; every hook runs even if
//!    another failed, timed out or panicked ([`Phase::Hooks`]).
//! 7. A [`ShutdownReport`] says what happened, with an **exit code**: 0 when clean,
//!    1 when forced, when work was cut at the deadline, or when a hook did not complete.
//!
//! A second trigger (or signal) forces the stop: waits are cut short, in-flight work is
//! cancelled at once, and the hooks not yet started are skipped.
//!
//! [`ShutdownLayer`] (any `Service`) and `HttpShutdownLayer` (feature `http`) count requests
//! in flight. While running, a call costs a relaxed load of the phase and a plain update of
//! a per-thread counter each way: no allocation, no shared read-modify-write (the drain
//! adds the counters up), and no lock for a call that completes at its first poll. A call
//! (or body) that waits leaves its waker with its thread's counter the first time, under
//! that counter's own lock, so that the deadline can wake it however long it has been
//! waiting. Once shutting down, HTTP/1
//! responses carry `Connection: close`, and new requests are served (the default) or
//! rejected with [`ShuttingDown`] / `503` + `Retry-After`. `CatchPanicLayer` (feature `http`)
//! answers `500` for a handler that panics, and reports it, so one bad request does not
//! take its connection down.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use palisade_shutdown::{Hook, Phase, Shutdown};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let shutdown = Shutdown::builder()
//!     .grace(Duration::from_secs(5))
//!     .drain_deadline(Duration::from_secs(30))
//!     .hook(Hook::new("database", || async { Ok::<_, Infallible>(()) }))
//!     .hook(Hook::new("logs", || async { Ok::<_, Infallible>(()) }).timeout(Duration::from_secs(2)))
//!     .build();
//!
//! let service = ServiceBuilder::new()
//!     .layer(shutdown.layer())
//!     .service_fn(|order: u32| async move {
//!         tokio::time::sleep(Duration::from_secs(8)).await;
//!         Ok::<_, Infallible>(order)
//!     });
//!
//! // A background worker that stops when the drain begins.
//! let worker = shutdown.spawn(|guard| async move {
//!     guard.stopping().await;
//! });
//!
//! let in_flight = tokio::spawn(service.oneshot(42));
//! tokio::task::yield_now().await;
//! shutdown.trigger(); // or SIGTERM, with `.on_signals()`
//!
//! // In `main`: drive the shutdown, then exit with its code.
//! let report = shutdown.run().await.unwrap();
//! assert_eq!(in_flight.await.unwrap().unwrap(), 42, "the drain waited for it");
//! worker.await.unwrap();
//! assert_eq!(report.requests_at_drain, 1);
//! assert!(report.hooks.iter().all(|hook| hook.outcome.is_completed()));
//! assert_eq!(report.code(), 0);
//! assert_eq!(shutdown.phase(), Phase::Done);
//! // std::process::exit(report.code().into()) or `return report.exit_code()`
//! # }
//! ```
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `http` | `HttpShutdownLayer` (module `http`): requests tracked until their response body ends, `Connection: close`, `503` + `Retry-After`; `HealthService`; `CatchPanicLayer` (module `catch_panic`): a panicking handler answers `500` |
//! | `serve` | `serve` (module `serve`, implies `http`): a hyper-util server, HTTP/1 and HTTP/2, that stops accepting, closes its connections gracefully (`GOAWAY` on HTTP/2) and drops them at the deadline |
//! | `signal` | `ShutdownBuilder::on_signals`: SIGTERM and SIGINT (Ctrl-C elsewhere) trigger the shutdown |
//!
//! # Running the coordinator
//!
//! [`Shutdown::run`] drives every phase after [`Phase::Unhealthy`]: spawn it, or join it
//! with the server, before awaiting anything that waits for a later phase. Awaiting a
//! server whose shutdown signal is [`Shutdown::wait_for`] and only then calling `run`
//! never ends. With [`on_signals`](ShutdownBuilder::on_signals), the signal handlers are
//! installed when the coordinator is built (inside a tokio runtime), so a SIGTERM that
//! comes before `run` is first polled is kept for it instead of ending the process.
//!
//! # Limits
//!
//! Requests are counted per thread, without a shared counter, so the drain adds the
//! counters up: at once when a request finishes during the shutdown, and every 10 ms
//! besides. A call that reaches the inner service at the very instant the drain ends may be
//! missed by that sum; it then fails with [`ShuttingDown`] at its first poll, as if it had
//! come a moment later.

#[cfg(feature = "http")]
pub mod catch_panic;
mod config;
mod error;
mod event;
mod future;
mod guard;
mod hook;
#[cfg(feature = "http")]
pub mod http;
mod inflight;
mod layer;
mod phase;
mod report;
#[cfg(feature = "serve")]
pub mod serve;
mod service;
mod shutdown;
mod signal;
mod state;

#[cfg(feature = "http")]
pub use crate::catch_panic::{CatchPanic, CatchPanicBody, CatchPanicLayer, Panicked};
pub use crate::config::{DEFAULT_CANCEL_GRACE, DEFAULT_DRAIN_DEADLINE, ShutdownBuilder};
pub use crate::error::RunError;
pub use crate::event::ShutdownEvent;
pub use crate::future::ResponseFuture;
pub use crate::guard::ShutdownGuard;
pub use crate::hook::{Hook, HookOutcome, HookReport};
#[cfg(feature = "http")]
pub use crate::http::{HealthService, HttpShutdownLayer, HttpShutdownService, ShutdownBody};
pub use crate::layer::ShutdownLayer;
pub use crate::phase::Phase;
pub use crate::report::ShutdownReport;
#[cfg(feature = "serve")]
pub use crate::serve::{Serve, ServeFuture, serve};
pub use crate::service::ShutdownService;
pub use crate::shutdown::Shutdown;
pub use palisade_core::reject::ShuttingDown;
