//! The coordinator's configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::Listener;

use crate::event::ShutdownEvent;
use crate::hook::Hook;
use crate::shutdown::Shutdown;

/// The default drain deadline: **30 s**, as in the patterns document (and Kubernetes'
/// default termination grace period).
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// The default time cancelled work gets to unwind after the deadline: **1 s**.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) grace: Duration,
    /// The grace delay ends early once the health endpoint has answered `503` this many
    /// times (feature `http`).
    pub(crate) grace_probes: Option<u32>,
    pub(crate) drain_deadline: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) signals: bool,
    pub(crate) listener: Option<Arc<dyn Listener<ShutdownEvent>>>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("grace", &self.grace)
            .field("grace_probes", &self.grace_probes)
            .field("drain_deadline", &self.drain_deadline)
            .field("cancel_grace", &self.cancel_grace)
            .field("signals", &self.signals)
            .field("listener", &self.listener.as_ref().map(|_| "..."))
            .finish()
    }
}

/// Builds a [`Shutdown`]; made by [`Shutdown::builder`].
///
/// | setting | default |
/// |---|---|
/// | [`grace`](Self::grace) delay before servers stop accepting | **none** |
/// | [`grace_until_probed`](Self::grace_until_probed): the grace delay ends once health has answered `503` this many times (feature `http`) | off: the whole delay |
/// | [`drain_deadline`](Self::drain_deadline) | **30 s** ([`DEFAULT_DRAIN_DEADLINE`]) |
/// | [`cancel_grace`](Self::cancel_grace) after the deadline | **1 s** ([`DEFAULT_CANCEL_GRACE`]) |
/// | [hooks](Self::hook) | none; each hook's timeout defaults to **5 s** ([`Hook::DEFAULT_TIMEOUT`]) |
/// | [signals](Self::on_signals) (feature `signal`) | not listened to |
///
/// Every duration is valid, zero included (no grace delay; a zero deadline cancels what is
/// in flight at once); a very long one means "practically never".
#[must_use]
pub struct ShutdownBuilder {
    config: Config,
    hooks: Vec<Hook>,
}

impl ShutdownBuilder {
    pub(crate) fn new() -> Self {
        Self {
            config: Config {
                grace: Duration::ZERO,
                grace_probes: None,
                drain_deadline: DEFAULT_DRAIN_DEADLINE,
                cancel_grace: DEFAULT_CANCEL_GRACE,
                signals: false,
                listener: None,
            },
            hooks: Vec::new(),
        }
    }

    /// How long to keep serving, with health already answering `503`, before servers stop
    /// accepting connections: the time load balancers need to notice (a few readiness-probe
    /// periods). Default: none.
    pub fn grace(mut self, delay: Duration) -> Self {
        self.config.grace = delay;
        self
    }

    /// Ends the [grace delay](Self::grace) early, once the [health endpoint](crate::HealthService)
    /// has answered `503` `probes` times: the readiness probes have seen the instance go
    /// unhealthy, so waiting out the rest of the delay gains nothing. The delay still
    /// bounds the wait if the probes do not come; `0` ends it at once (feature `http`).
    ///
    /// Every `503` counts, whoever asked: with several probers (a load balancer probing
    /// from several nodes, the kubelet), count them all, for instance probers times their
    /// failure threshold. Default: off, the grace delay is waited out.
    ///
    /// ```
    /// use std::time::Duration;
    /// use palisade_shutdown::{Phase, Shutdown};
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let shutdown = Shutdown::builder()
    ///     .grace(Duration::from_secs(60))
    ///     .grace_until_probed(2)
    ///     .build();
    /// let run = tokio::spawn({
    ///     let shutdown = shutdown.clone();
    ///     async move { shutdown.run().await }
    /// });
    /// shutdown.trigger();
    /// for _ in 0..2 {
    ///     let probe = shutdown.health().oneshot(http::Request::new(())).await.unwrap();
    ///     assert_eq!(probe.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    /// }
    /// shutdown.wait_for(Phase::StopAccepting).await;
    /// assert!(shutdown.uptime() < Duration::from_secs(60), "not the whole delay");
    /// # run.await.unwrap().unwrap();
    /// # }
    /// ```
    #[cfg(feature = "http")]
    pub fn grace_until_probed(mut self, probes: u32) -> Self {
        self.config.grace_probes = Some(probes);
        self
    }

    /// How long the drain waits for in-flight requests (until their response bodies end)
    /// and registered work before cancelling what remains. Counted from the start of the
    /// drain, after the grace delay. Default: 30 s.
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.config.drain_deadline = deadline;
        self
    }

    /// How long cancelled work gets to unwind after the deadline before the hooks run
    /// regardless; what is still running then is reported as abandoned. Default: 1 s.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.config.cancel_grace = grace;
        self
    }

    /// Adds a cleanup hook. Hooks run one after another in the order they were added, each
    /// within its own timeout; every hook runs even if an earlier one failed, timed out or
    /// panicked. More can be added later with [`Shutdown::add_hook`].
    pub fn hook(mut self, hook: Hook) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Sends the coordinator's [events](ShutdownEvent) to `listener`: phase changes (with
    /// the in-flight gauges), rejected requests, hook outcomes.
    pub fn listener<L: Listener<ShutdownEvent> + 'static>(mut self, listener: L) -> Self {
        self.config.listener = Some(Arc::new(listener));
        self
    }

    /// Lets SIGTERM and SIGINT (Ctrl-C on platforms without Unix signals) trigger the
    /// shutdown while [`Shutdown::run`] runs; a second signal forces it, like a second
    /// [`trigger`](Shutdown::trigger) (feature `signal`).
    ///
    /// The handlers are installed by [`build`](Self::build) when it is called inside a tokio
    /// runtime (in `#[tokio::main]`, say): from then on a signal is kept for `run`, even one
    /// that comes before `run` is first polled, instead of having its default effect
    /// (SIGTERM ends the process). Built outside a runtime, the coordinator installs them on
    /// the first poll of `run`. On platforms without Unix signals, Ctrl-C is listened to
    /// from the first poll of `run`.
    ///
    /// # Panics
    ///
    /// `build`, or `run`, panics inside a tokio runtime whose I/O driver is not enabled,
    /// like [`tokio::signal`]: build the runtime with `enable_all` (as `#[tokio::main]`
    /// does).
    #[cfg(feature = "signal")]
    pub fn on_signals(mut self) -> Self {
        self.config.signals = true;
        self
    }

    /// The coordinator. With [`on_signals`](Self::on_signals), inside a tokio runtime, it
    /// listens for signals from now on.
    pub fn build(self) -> Shutdown {
        Shutdown::from_parts(self.config, self.hooks)
    }
}

impl fmt::Debug for ShutdownBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownBuilder")
            .field("config", &self.config)
            .field("hooks", &self.hooks)
            .finish()
    }
}
