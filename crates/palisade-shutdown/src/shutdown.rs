//! The coordinator.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{Config, ShutdownBuilder};
use crate::error::RunError;
use crate::event::ShutdownEvent;
use crate::guard::ShutdownGuard;
use crate::hook::{Hook, HookOutcome, HookReport};
use crate::layer::ShutdownLayer;
use crate::phase::Phase;
use crate::report::ShutdownReport;
use crate::state::State;

/// The shutdown coordinator: one per process, cloned freely (clones are the same
/// coordinator).
///
/// - [`trigger`](Self::trigger) (or SIGTERM / SIGINT with [`on_signals`](ShutdownBuilder::on_signals))
///   starts the shutdown: health answers `503` at once. A second trigger forces the stop.
/// - [`run`](Self::run) drives it through its [phases](Phase) (grace, stop accepting,
///   drain up to the deadline, cancel, hooks) and returns a [`ShutdownReport`] with an exit
///   code. Call it once, spawned or joined with the server: nothing waiting for a phase
///   after [`Phase::Unhealthy`] ends while `run` is not polled.
/// - [`layer`](Self::layer) (and `http_layer` with feature `http`) tracks requests;
///   [`guard`](Self::guard) and [`spawn`](Self::spawn) track long-lived work;
///   [`subscribe`](Self::subscribe) and [`wait_for`](Self::wait_for) let servers follow
///   the phases (stop accepting at [`Phase::StopAccepting`], close connections at
///   [`Phase::Cancelling`]).
///
/// See the [crate docs](crate) for a complete example.
#[derive(Clone)]
pub struct Shutdown {
    pub(crate) state: Arc<State>,
}

impl Shutdown {
    /// A builder, with the defaults documented on [`ShutdownBuilder`].
    pub fn builder() -> ShutdownBuilder {
        ShutdownBuilder::new()
    }

    /// A coordinator with the default settings (no grace delay, a 30 s drain deadline, no
    /// hooks, no signals).
    pub fn new() -> Self {
        Self::builder().build()
    }

    pub(crate) fn from_parts(config: Config, hooks: Vec<Hook>) -> Self {
        let shutdown = Self {
            state: State::new(config, hooks),
        };
        shutdown.listen_for_signals();
        shutdown
    }

    /// With [`on_signals`](ShutdownBuilder::on_signals), inside a tokio runtime: installs the
    /// handlers now, so that a signal that comes before `run` is first polled is kept for
    /// it instead of ending the process. Outside a runtime, `run` installs them.
    #[cfg(feature = "signal")]
    fn listen_for_signals(&self) {
        if !self.state.config.signals || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        match crate::signal::Signals::new() {
            Ok(signals) => {
                *self
                    .state
                    .signals
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(signals);
            }
            Err(error) => tracing::warn!(
                %error,
                "cannot listen for shutdown signals yet: `run` tries again"
            ),
        }
    }

    #[cfg(not(feature = "signal"))]
    #[allow(clippy::unused_self)]
    fn listen_for_signals(&self) {}

    /// Starts the shutdown: the phase becomes [`Phase::Unhealthy`] at once, so the health
    /// service answers `503` from this call on, and [`run`](Self::run) proceeds. A second
    /// call forces the stop: whatever is being waited for is cut short, in-flight work is
    /// cancelled at once and the hooks not yet started are skipped. Later calls do nothing.
    pub fn trigger(&self) {
        let state = &*self.state;
        let count = state
            .trigger_count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_add(1))
            .map_or(u32::MAX, |n| n + 1);
        match count {
            1 => {
                // Unhealthy first, then what is said about it, and only then is `run` let
                // go: on another thread it would otherwise race ahead, and its phases could
                // be reported before this one.
                let from = state.core.advance_phase(Phase::Unhealthy);
                tracing::info!("shutdown triggered");
                state.emit(&ShutdownEvent::Triggered { count });
                if let Some(from) = from {
                    state.report_phase(from, Phase::Unhealthy);
                }
            }
            2 => {
                tracing::warn!("shutdown triggered again: forcing the stop");
                state.emit(&ShutdownEvent::Triggered { count });
            }
            _ => return,
        }
        state.triggers.send_if_modified(|published| {
            // A second trigger that comes while the first is still reporting leaves it to
            // the first to publish both.
            if count > 1 && *published == 0 {
                return false;
            }
            let total = state.trigger_count.load(Ordering::Acquire).min(2);
            let advance = total > *published;
            if advance {
                *published = total;
            }
            advance
        });
    }

    /// Whether the shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.state.trigger_count.load(Ordering::Acquire) > 0
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// A receiver of the phase, to follow it as it changes (it may skip phases passed
    /// through at once; [events](ShutdownEvent) report every one).
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.state.subscribe()
    }

    /// A future that resolves once the shutdown has reached `phase` (at once if it already
    /// has). It owns what it needs, so it can be handed to a server, e.g. axum's
    /// `with_graceful_shutdown(shutdown.wait_for(Phase::StopAccepting))`.
    ///
    /// Phases after [`Phase::Unhealthy`] are reached only while [`run`](Self::run) is
    /// polled: spawn it or join it with the server, never await the server first.
    pub fn wait_for(&self, phase: Phase) -> impl Future<Output = ()> + Send + 'static {
        let mut phases = self.subscribe();
        async move {
            // The sender lives in the shared state, which this receiver's coordinator keeps
            // alive; an error cannot happen, and would mean there is nothing to wait for.
            let _ = phases.wait_for(|current| *current >= phase).await;
        }
    }

    /// Requests in flight through this coordinator's layers: each counts until its
    /// response (with feature `http`, its response body) is done.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight()
    }

    /// Registered tasks alive ([guards](Self::guard) not yet dropped).
    pub fn tasks(&self) -> usize {
        self.state.tasks()
    }

    /// How long ago the coordinator was built (tokio's clock), as the health endpoint
    /// reports it.
    pub fn uptime(&self) -> Duration {
        self.state.started.elapsed()
    }

    /// Registers long-lived work: the drain waits until the guard is dropped, and the guard
    /// tells the work when to stop. See [`ShutdownGuard`].
    pub fn guard(&self) -> ShutdownGuard {
        ShutdownGuard::new(Arc::clone(&self.state))
    }

    /// Spawns `work(guard)` on the current tokio runtime with a fresh [guard](Self::guard),
    /// which it should drop (return) when told to stop.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like [`tokio::spawn`].
    pub fn spawn<F, Fut>(&self, work: F) -> tokio::task::JoinHandle<Fut::Output>
    where
        F: FnOnce(ShutdownGuard) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        tokio::spawn(work(self.guard()))
    }

    /// Adds a cleanup hook after those already registered. A hook added once the hooks
    /// have started running does not run.
    pub fn add_hook(&self, hook: Hook) {
        self.state
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    /// A [`ShutdownLayer`] that tracks requests for this coordinator.
    pub fn layer(&self) -> ShutdownLayer {
        ShutdownLayer::new(self)
    }

    /// Drives the shutdown: waits for the trigger (or a signal, with
    /// [`on_signals`](ShutdownBuilder::on_signals)), then goes through the [phases](Phase)
    /// and returns what happened. The report's [`exit_code`](ShutdownReport::exit_code) is
    /// what `main` should return.
    ///
    /// Nothing moves past [`Phase::Unhealthy`] unless this future is polled: spawn it, or
    /// join it with the server, *before* awaiting anything that waits for a later phase,
    /// and poll it to completion (not in a `select!` that may drop it). Awaiting a server
    /// whose shutdown signal is [`wait_for`](Self::wait_for)`(Phase::StopAccepting)` and only
    /// then calling `run` never ends:
    ///
    /// ```
    /// # use palisade_shutdown::{Phase, Shutdown};
    /// # async fn server(stop: impl std::future::Future<Output = ()>) { stop.await }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let shutdown = Shutdown::new();
    /// // Not `server(..).await; shutdown.run().await`: the server would wait forever.
    /// let server = server(shutdown.wait_for(Phase::StopAccepting));
    /// # shutdown.trigger();
    /// let (report, ()) = tokio::join!(shutdown.run(), server);
    /// assert_eq!(report.unwrap().code(), 0);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`RunError::AlreadyRunning`] if `run` was already called on this coordinator or a
    /// clone; [`RunError::Signals`] if listening for signals failed (the handlers could not
    /// be installed when the coordinator was built, nor now); `run` can then be called
    /// again.
    pub async fn run(&self) -> Result<ShutdownReport, RunError> {
        if self.state.running.swap(true, Ordering::AcqRel) {
            return Err(RunError::AlreadyRunning);
        }
        let signals = match self.signals() {
            Ok(signals) => signals,
            Err(error) => {
                self.state.running.store(false, Ordering::Release);
                return Err(error);
            }
        };
        let mut ctx = Ctx {
            triggers: self.state.triggers.subscribe(),
            signals,
        };
        self.wait_triggered(&mut ctx).await;
        Ok(self.sequence(&mut ctx).await)
    }

    /// The signal streams: those installed by `build`, or new ones.
    #[cfg(feature = "signal")]
    fn signals(&self) -> Result<Option<crate::signal::Signals>, RunError> {
        if !self.state.config.signals {
            return Ok(None);
        }
        let installed = self
            .state
            .signals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match installed {
            Some(signals) => Ok(Some(signals)),
            None => crate::signal::Signals::new()
                .map(Some)
                .map_err(RunError::Signals),
        }
    }

    #[cfg(not(feature = "signal"))]
    #[allow(clippy::unnecessary_wraps, clippy::unused_self)]
    fn signals(&self) -> Result<Option<crate::signal::Signals>, RunError> {
        Ok(None)
    }

    /// Waits for the first trigger; a signal is a trigger.
    async fn wait_triggered(&self, ctx: &mut Ctx) {
        loop {
            tokio::select! {
                _ = ctx.triggers.wait_for(|n| *n >= 1) => return,
                () = next_signal(&mut ctx.signals) => self.trigger(),
            }
        }
    }

    /// Resolves when the stop is forced (a second trigger or signal).
    async fn forced(&self, ctx: &mut Ctx) {
        loop {
            tokio::select! {
                _ = ctx.triggers.wait_for(|n| *n >= 2) => return,
                () = next_signal(&mut ctx.signals) => self.trigger(),
            }
        }
    }

    /// `future`'s output, or `None` if the stop is (or gets) forced first.
    async fn unless_forced<T>(&self, ctx: &mut Ctx, future: impl Future<Output = T>) -> Option<T> {
        if ctx.is_forced() {
            return None;
        }
        tokio::select! {
            biased;
            () = self.forced(ctx) => None,
            output = future => Some(output),
        }
    }

    async fn sequence(&self, ctx: &mut Ctx) -> ShutdownReport {
        let state = &*self.state;
        let config = &state.config;
        let started = Instant::now();

        state.set_phase(Phase::Grace);
        if !config.grace.is_zero() {
            self.unless_forced(ctx, state.grace(config.grace)).await;
        }

        state.set_phase(Phase::StopAccepting);
        let requests_at_drain = state.in_flight();
        let tasks_at_drain = state.tasks();
        state.set_phase(Phase::Draining);
        state.stop.cancel();
        let drained = self
            .unless_forced(
                ctx,
                tokio::time::timeout(config.drain_deadline, state.drained()),
            )
            .await;
        let drained = matches!(drained, Some(Ok(())));
        let (requests_cancelled, tasks_cancelled) = if drained {
            (0, 0)
        } else {
            (state.in_flight(), state.tasks())
        };
        if !drained {
            tracing::warn!(
                requests = requests_cancelled,
                tasks = tasks_cancelled,
                forced = ctx.is_forced(),
                "drain incomplete: cancelling what remains"
            );
        }

        state.set_phase(Phase::Cancelling);
        state.cancel.cancel();
        let mut abandoned = 0;
        if !drained {
            let unwound = self
                .unless_forced(
                    ctx,
                    tokio::time::timeout(config.cancel_grace, state.drained()),
                )
                .await;
            if !matches!(unwound, Some(Ok(()))) {
                abandoned = state.in_flight() + state.tasks();
            }
        }

        state.set_phase(Phase::Hooks);
        let hooks = self.run_hooks(ctx).await;

        let report = ShutdownReport {
            forced: ctx.is_forced(),
            requests_at_drain,
            tasks_at_drain,
            requests_cancelled,
            tasks_cancelled,
            abandoned,
            hooks,
            elapsed: started.elapsed(),
        };
        state.set_phase(Phase::Done);
        tracing::info!(
            clean = report.is_clean(),
            exit_code = report.code(),
            elapsed = ?report.elapsed,
            "shutdown done"
        );
        report
    }

    async fn run_hooks(&self, ctx: &mut Ctx) -> Vec<HookReport> {
        let hooks = std::mem::take(
            &mut *self
                .state
                .hooks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut reports = Vec::with_capacity(hooks.len());
        for hook in hooks {
            let started = Instant::now();
            let name = hook.name().to_owned();
            let (name, outcome) = if ctx.is_forced() {
                (name.into(), HookOutcome::Skipped)
            } else {
                match self.unless_forced(ctx, hook.run()).await {
                    Some(done) => done,
                    None => (name.into(), HookOutcome::Interrupted),
                }
            };
            let elapsed = started.elapsed();
            if outcome.is_completed() {
                tracing::info!(hook = %name, ?elapsed, "shutdown hook completed");
            } else {
                tracing::error!(hook = %name, %outcome, ?elapsed, "shutdown hook did not complete");
            }
            self.state.emit(&ShutdownEvent::HookFinished {
                name: name.clone(),
                outcome: outcome.clone(),
                elapsed,
            });
            reports.push(HookReport {
                name,
                outcome,
                elapsed,
            });
        }
        reports
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("state", &self.state)
            .finish()
    }
}

/// What `run` listens to while it waits.
struct Ctx {
    triggers: watch::Receiver<u32>,
    signals: Option<crate::signal::Signals>,
}

impl Ctx {
    fn is_forced(&self) -> bool {
        *self.triggers.borrow() >= 2
    }
}

/// The next signal; never, without signals.
async fn next_signal(signals: &mut Option<crate::signal::Signals>) {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}
