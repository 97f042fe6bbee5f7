//! The state every part of a shutdown shares, and the in-flight tracker.
//!
//! In-flight work is counted without a counter of its own: every in-flight request and every
//! registered task holds a strong reference to one [`Tracker`], and the coordinator holds
//! one more (the *base*) until the drain begins. Services keep only a [`Weak`] to it, so
//! admitting a request is one [`Weak::upgrade`] (a single compare-exchange on the reference
//! count) and finishing one is dropping the `Arc` (a single decrement): no second counter to
//! keep in step, and the `Arc` that keeps the count is the same one the response future
//! needs anyway. When the drain begins the base is dropped; the last in-flight reference to
//! go drops the tracker, which wakes the coordinator. A request that arrives after that
//! finds nothing to upgrade: the drain is over, and it is rejected.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Context;

use palisade_core::event::Listener as _;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::Config;
use crate::event::ShutdownEvent;
use crate::hook::Hook;
use crate::phase::Phase;

/// What in-flight requests and their bodies need: the phase, and a way to be woken at the
/// deadline.
#[derive(Debug)]
pub(crate) struct Core {
    /// The current [`Phase`] as its number; the source of truth for hot-path checks.
    phase: AtomicU8,
    /// Cancelled at the drain deadline, or at once on a forced stop.
    pub(crate) cancel: CancellationToken,
    /// Notified (with a stored permit) when the tracker is dropped.
    drained: Notify,
}

impl Core {
    /// The current phase, read with a relaxed load (the hot path's only read).
    #[inline]
    pub(crate) fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }
}

/// Held (as an `Arc`) by every in-flight request and registered task; see the module docs.
#[derive(Debug)]
pub(crate) struct Tracker {
    core: Arc<Core>,
}

impl Tracker {
    #[inline]
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // `notify_one` stores a permit if the coordinator is not waiting yet.
        self.core.drained.notify_one();
    }
}

/// Everything one [`Shutdown`](crate::Shutdown) is: shared by its clones, its layers, its
/// guards and its health service.
pub(crate) struct State {
    pub(crate) core: Arc<Core>,
    pub(crate) requests: Weak<Tracker>,
    /// The coordinator's own reference to the tracker, dropped when the drain begins.
    base: Mutex<Option<Arc<Tracker>>>,
    /// How many of the tracker's references are registered tasks (guards).
    tasks: AtomicUsize,
    phase_tx: watch::Sender<Phase>,
    /// How many times the shutdown was triggered: 1 starts it, 2 forces it.
    pub(crate) triggers: watch::Sender<u32>,
    /// Cancelled when the drain begins: long-lived work is told to stop. A child of
    /// `core.cancel`, so cancelling that cancels this too.
    pub(crate) stop: CancellationToken,
    pub(crate) started: Instant,
    pub(crate) config: Config,
    pub(crate) hooks: Mutex<Vec<Hook>>,
    pub(crate) running: AtomicBool,
}

impl State {
    pub(crate) fn new(config: Config, hooks: Vec<Hook>) -> Arc<Self> {
        let cancel = CancellationToken::new();
        let stop = cancel.child_token();
        let core = Arc::new(Core {
            phase: AtomicU8::new(Phase::Running as u8),
            cancel,
            drained: Notify::new(),
        });
        let base = Arc::new(Tracker {
            core: Arc::clone(&core),
        });
        Arc::new(State {
            requests: Arc::downgrade(&base),
            base: Mutex::new(Some(base)),
            core,
            tasks: AtomicUsize::new(0),
            phase_tx: watch::Sender::new(Phase::Running),
            triggers: watch::Sender::new(0),
            stop,
            started: Instant::now(),
            config,
            hooks: Mutex::new(hooks),
            running: AtomicBool::new(false),
        })
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.core.phase.load(Ordering::Acquire))
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase_tx.subscribe()
    }

    /// Moves to `to`: the atomic first (what requests read), then events (so that logs say
    /// "phase changed" before what servers do about it), then the watch.
    pub(crate) fn set_phase(&self, to: Phase) {
        let from = Phase::from_u8(self.core.phase.swap(to as u8, Ordering::AcqRel));
        if from == to {
            return;
        }
        let (in_flight, tasks) = (self.in_flight(), self.tasks());
        tracing::info!(
            from = from.as_str(),
            to = to.as_str(),
            in_flight,
            tasks,
            "shutdown phase changed"
        );
        self.emit(&ShutdownEvent::PhaseChanged {
            from,
            to,
            in_flight,
            tasks,
        });
        self.phase_tx.send_replace(to);
    }

    pub(crate) fn emit(&self, event: &ShutdownEvent) {
        if let Some(listener) = &self.config.listener {
            listener.on_event(event);
        }
    }

    /// Requests in flight: the tracker's references less the base and the tasks. Exact when
    /// nothing is changing; may count one too many while a task registers or leaves.
    pub(crate) fn in_flight(&self) -> usize {
        let base = usize::from(self.base_held());
        self.requests
            .strong_count()
            .saturating_sub(base)
            .saturating_sub(self.tasks())
    }

    pub(crate) fn tasks(&self) -> usize {
        self.tasks.load(Ordering::Acquire)
    }

    fn base_held(&self) -> bool {
        self.base
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Drops the base reference: from now on the tracker lives only as long as the work
    /// in flight.
    pub(crate) fn release_base(&self) {
        let base = self
            .base
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(base);
    }

    /// Resolves once every in-flight request and task is done (after
    /// [`release_base`](Self::release_base)).
    pub(crate) async fn drained(&self) {
        while self.requests.strong_count() > 0 {
            self.core.drained.notified().await;
        }
    }

    /// Registers a task: a reference to the tracker, or `None` when the drain is over.
    pub(crate) fn register_task(&self) -> Option<Arc<Tracker>> {
        let tracker = self.requests.upgrade()?;
        self.tasks.fetch_add(1, Ordering::AcqRel);
        Some(tracker)
    }

    pub(crate) fn unregister_task(&self, tracker: Arc<Tracker>) {
        self.tasks.fetch_sub(1, Ordering::AcqRel);
        drop(tracker);
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("phase", &self.phase())
            .field("in_flight", &self.in_flight())
            .field("tasks", &self.tasks())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The part of a request future or body that cuts it at the deadline.
///
/// While running it costs one relaxed load per poll. Once the shutdown has been triggered, a
/// poll that finds the inner future pending registers to be woken at the deadline (one
/// allocation, then, and only for requests still pending during a shutdown).
#[derive(Default)]
pub(crate) struct Deadline {
    wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

pub(crate) const CANCELLING: u8 = Phase::Cancelling as u8;
pub(crate) const RUNNING: u8 = Phase::Running as u8;

impl Deadline {
    /// Whether the deadline has passed (checked before polling the inner future).
    #[inline]
    pub(crate) fn passed(core: &Core) -> bool {
        core.phase() >= CANCELLING
    }

    /// After the inner future returned `Pending`: whether the deadline has passed, making
    /// sure `cx` is woken when it does if a shutdown is under way.
    #[inline]
    pub(crate) fn poll_passed(&mut self, core: &Core, cx: &mut Context<'_>) -> bool {
        let phase = core.phase();
        if phase == RUNNING {
            return false;
        }
        if phase >= CANCELLING {
            return true;
        }
        self.poll_wait(core, cx)
    }

    #[cold]
    fn poll_wait(&mut self, core: &Core, cx: &mut Context<'_>) -> bool {
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(core.cancel.clone().cancelled_owned()));
        wait.as_mut().poll(cx).is_ready()
    }
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("registered", &self.wait.is_some())
            .finish()
    }
}
