//! The coordinator's sequence under paused time: phase order and timing, the drain and its
//! deadline, hooks in order with their timeouts and failures isolated, the forced stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::event::listener_fn;
use palisade_shutdown::{
    Hook, HookOutcome, Phase, RunError, Shutdown, ShutdownBuilder, ShutdownEvent, ShutdownReport,
};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

const SECOND: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Every phase change, with the time it happened (since `start`).
type Phases = Arc<Mutex<Vec<(Phase, Duration)>>>;

fn recording(builder: ShutdownBuilder) -> (Shutdown, Phases) {
    let phases: Phases = Arc::default();
    let sink = Arc::clone(&phases);
    let start = Instant::now();
    let shutdown = builder
        .listener(listener_fn(move |event: &ShutdownEvent| {
            if let ShutdownEvent::PhaseChanged { to, .. } = event {
                sink.lock().unwrap().push((*to, start.elapsed()));
            }
        }))
        .build();
    (shutdown, phases)
}

fn spawn_run(shutdown: &Shutdown) -> JoinHandle<Result<ShutdownReport, RunError>> {
    let shutdown = shutdown.clone();
    tokio::spawn(async move { shutdown.run().await })
}

fn seen(phases: &Phases) -> Vec<(Phase, Duration)> {
    phases.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn phases_run_in_order_with_the_grace_delay_before_stop_accepting() {
    let (shutdown, phases) = recording(Shutdown::builder().grace(secs(5)));
    let run = spawn_run(&shutdown);
    sleep(secs(2)).await;
    assert_eq!(shutdown.phase(), Phase::Running);
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();

    let t = secs(2);
    assert_eq!(
        seen(&phases),
        [
            (Phase::Unhealthy, t),
            (Phase::Grace, t),
            (Phase::StopAccepting, t + secs(5)),
            (Phase::Draining, t + secs(5)),
            (Phase::Cancelling, t + secs(5)),
            (Phase::Hooks, t + secs(5)),
            (Phase::Done, t + secs(5)),
        ]
    );
    assert_eq!(shutdown.phase(), Phase::Done);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.code(), 0);
    assert_eq!(report.elapsed, secs(5));
}

#[tokio::test(start_paused = true)]
async fn trigger_turns_unhealthy_at_once_even_before_run_is_polled() {
    let shutdown = Shutdown::new();
    assert!(!shutdown.is_triggered());
    shutdown.trigger();
    assert!(shutdown.is_triggered());
    assert_eq!(shutdown.phase(), Phase::Unhealthy);
    assert_eq!(*shutdown.subscribe().borrow(), Phase::Unhealthy);
}

#[tokio::test(start_paused = true)]
async fn wait_for_resolves_once_the_phase_is_reached() {
    let shutdown = Shutdown::builder().grace(secs(3)).build();
    let stop_accepting = tokio::spawn({
        let reached = shutdown.wait_for(Phase::StopAccepting);
        async move {
            reached.await;
            Instant::now()
        }
    });
    let run = spawn_run(&shutdown);
    let triggered = Instant::now();
    shutdown.trigger();
    run.await.unwrap().unwrap();
    assert_eq!(stop_accepting.await.unwrap() - triggered, secs(3));
    // Reached already: resolves at once.
    shutdown.wait_for(Phase::Draining).await;
}

#[tokio::test(start_paused = true)]
async fn the_drain_waits_for_registered_work_that_stops_when_told() {
    let (shutdown, phases) = recording(Shutdown::builder());
    let worker = shutdown.spawn(|guard| async move {
        guard.stopping().await;
        // Finishing up takes a while.
        sleep(secs(4)).await;
        drop(guard);
    });
    assert_eq!(shutdown.tasks(), 1);
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    worker.await.unwrap();

    let draining = seen(&phases)
        .into_iter()
        .find(|(phase, _)| *phase == Phase::Cancelling)
        .unwrap();
    assert_eq!(draining.1, secs(4), "the drain ended when the worker did");
    assert_eq!(report.tasks_at_drain, 1);
    assert_eq!(report.tasks_cancelled, 0);
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cancels_work_that_does_not_stop() {
    let (shutdown, phases) = recording(
        Shutdown::builder()
            .drain_deadline(secs(30))
            .cancel_grace(secs(2)),
    );
    let stubborn = shutdown.spawn(|guard| async move {
        // Ignores `stopping`; gives up only when cancelled, and takes 1 s to do so.
        guard.cancelled().await;
        let cancelled_at = Instant::now();
        sleep(SECOND).await;
        cancelled_at
    });
    let run = spawn_run(&shutdown);
    let triggered = Instant::now();
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();

    assert_eq!(stubborn.await.unwrap() - triggered, secs(30));
    let at = |wanted| {
        seen(&phases)
            .into_iter()
            .find(|(phase, _)| *phase == wanted)
            .unwrap()
            .1
    };
    assert_eq!(at(Phase::Cancelling), secs(30));
    assert_eq!(
        at(Phase::Hooks),
        secs(31),
        "the cancelled work unwound in 1 s"
    );
    assert_eq!(report.tasks_cancelled, 1);
    assert_eq!(report.abandoned, 0);
    assert!(!report.forced);
    assert_eq!(report.code(), 1);
}

#[tokio::test(start_paused = true)]
async fn work_that_ignores_cancellation_is_abandoned_after_the_cancel_grace() {
    let shutdown = Shutdown::builder()
        .drain_deadline(secs(10))
        .cancel_grace(secs(2))
        .build();
    let guard = shutdown.guard();
    let run = spawn_run(&shutdown);
    let triggered = Instant::now();
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert_eq!(triggered.elapsed(), secs(12));
    assert!(guard.is_stopping() && guard.is_cancelled());
    assert_eq!((report.tasks_cancelled, report.abandoned), (1, 1));
    assert_eq!(report.code(), 1);
}

#[tokio::test(start_paused = true)]
async fn hooks_run_in_order_and_every_one_runs_whatever_the_others_do() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let hook = |name: &'static str, work: Duration, result: Result<(), &'static str>| {
        let order = Arc::clone(&order);
        Hook::new(name, move || async move {
            order.lock().unwrap().push(name);
            sleep(work).await;
            result
        })
    };
    let shutdown = Shutdown::builder()
        .hook(hook("database", secs(1), Ok(())))
        .hook(hook("cache", secs(1), Err("connection reset")))
        .hook(hook("queue", secs(60), Ok(())).timeout(secs(3)))
        .hook(Hook::new("exporter", || async {
            panic!("exporter exploded");
            #[allow(unreachable_code)]
            Ok::<_, std::io::Error>(())
        }))
        .build();
    shutdown.add_hook(hook("logs", secs(1), Ok(())));

    let run = spawn_run(&shutdown);
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();

    assert_eq!(
        *order.lock().unwrap(),
        ["database", "cache", "queue", "logs"]
    );
    let outcomes: Vec<_> = report
        .hooks
        .iter()
        .map(|h| (h.name.as_ref(), h.outcome.clone(), h.elapsed))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("database", HookOutcome::Completed, secs(1)),
            (
                "cache",
                HookOutcome::Failed("connection reset".into()),
                secs(1)
            ),
            ("queue", HookOutcome::TimedOut(secs(3)), secs(3)),
            (
                "exporter",
                HookOutcome::Panicked("exporter exploded".into()),
                Duration::ZERO
            ),
            ("logs", HookOutcome::Completed, secs(1)),
        ]
    );
    assert_eq!(report.elapsed, secs(6));
    assert!(!report.is_clean());
    assert_eq!(report.code(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hook_that_panics_before_returning_its_future_is_isolated_too() {
    let shutdown = Shutdown::builder()
        .hook(Hook::new(
            "eager",
            || -> std::future::Ready<Result<(), std::io::Error>> { panic!("no future") },
        ))
        .hook(Hook::new("after", || async { Ok::<_, std::io::Error>(()) }))
        .build();
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        report.hooks[0].outcome,
        HookOutcome::Panicked("no future".into())
    );
    assert_eq!(report.hooks[1].outcome, HookOutcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_second_trigger_forces_an_immediate_stop() {
    let ran = Arc::new(Mutex::new(false));
    let flag = Arc::clone(&ran);
    let (shutdown, phases) = recording(
        Shutdown::builder()
            .grace(secs(5))
            .drain_deadline(secs(30))
            .hook(Hook::new("database", move || async move {
                *flag.lock().unwrap() = true;
                Ok::<_, std::io::Error>(())
            })),
    );
    let guard = shutdown.guard();
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    sleep(secs(8)).await;
    assert_eq!(shutdown.phase(), Phase::Draining);
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();

    let after: Vec<_> = seen(&phases)
        .into_iter()
        .filter(|(phase, _)| *phase >= Phase::Cancelling)
        .collect();
    assert_eq!(
        after,
        [
            (Phase::Cancelling, secs(8)),
            (Phase::Hooks, secs(8)),
            (Phase::Done, secs(8)),
        ],
        "no cancel grace, no hooks after a forced stop"
    );
    assert!(guard.is_cancelled());
    assert!(report.forced);
    assert_eq!((report.tasks_cancelled, report.abandoned), (1, 1));
    assert_eq!(report.hooks[0].outcome, HookOutcome::Skipped);
    assert!(!*ran.lock().unwrap());
    assert_eq!(report.code(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_second_trigger_during_the_grace_delay_skips_it() {
    let (shutdown, phases) = recording(Shutdown::builder().grace(secs(20)));
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    sleep(secs(1)).await;
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert_eq!(seen(&phases).last(), Some(&(Phase::Done, secs(1))));
    assert!(report.forced);
    assert_eq!(report.code(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_second_trigger_during_the_hooks_interrupts_the_running_one_and_skips_the_rest() {
    let shutdown = Shutdown::builder()
        .hook(
            Hook::new("slow", || async {
                sleep(secs(10)).await;
                Ok::<_, std::io::Error>(())
            })
            .timeout(secs(60)),
        )
        .hook(Hook::new("next", || async { Ok::<_, std::io::Error>(()) }))
        .build();
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    shutdown.wait_for(Phase::Hooks).await;
    sleep(secs(2)).await;
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    let outcomes: Vec<_> = report.hooks.iter().map(|h| h.outcome.clone()).collect();
    assert_eq!(outcomes, [HookOutcome::Interrupted, HookOutcome::Skipped]);
    assert_eq!(report.hooks[0].elapsed, secs(2));
}

#[tokio::test(start_paused = true)]
async fn run_drives_one_shutdown_only() {
    let shutdown = Shutdown::new();
    let first = spawn_run(&shutdown);
    tokio::task::yield_now().await;
    assert!(matches!(
        shutdown.clone().run().await,
        Err(RunError::AlreadyRunning)
    ));
    shutdown.trigger();
    assert!(first.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_guard_made_after_the_drain_tracks_nothing_and_is_told_to_stop() {
    let shutdown = Shutdown::new();
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    run.await.unwrap().unwrap();
    let late = shutdown.guard();
    assert!(!late.is_tracked());
    assert!(late.is_stopping() && late.is_cancelled());
    late.stopping().await;
}

#[tokio::test(start_paused = true)]
async fn events_report_triggers_phases_and_hooks() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let shutdown = Shutdown::builder()
        .listener(listener_fn(move |event: &ShutdownEvent| {
            sink.lock().unwrap().push(event.clone());
        }))
        .hook(Hook::new("logs", || async { Ok::<_, std::io::Error>(()) }))
        .build();
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    run.await.unwrap().unwrap();
    shutdown.trigger();
    shutdown.trigger();
    let events = events.lock().unwrap();
    assert_eq!(events[0], ShutdownEvent::Triggered { count: 1 });
    assert!(matches!(
        events[1],
        ShutdownEvent::PhaseChanged {
            from: Phase::Running,
            to: Phase::Unhealthy,
            ..
        }
    ));
    assert!(events.iter().any(|e| matches!(
        e,
        ShutdownEvent::HookFinished { name, outcome: HookOutcome::Completed, .. } if name == "logs"
    )));
    assert_eq!(
        events.last(),
        Some(&ShutdownEvent::Triggered { count: 2 }),
        "later triggers are not reported"
    );
}

type RunFuture = std::pin::Pin<Box<dyn Future<Output = Result<ShutdownReport, RunError>> + Send>>;

/// `run`, polled by hand: still going, or done.
enum Racing {
    Going(RunFuture),
    Done(Result<ShutdownReport, RunError>),
}

impl Racing {
    /// Polls `run` once, with a waker that does nothing.
    fn poll(self) -> Self {
        match self {
            Racing::Going(mut run) => {
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                match run.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(done) => Racing::Done(done),
                    std::task::Poll::Pending => Racing::Going(run),
                }
            }
            done @ Racing::Done(_) => done,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_that_races_ahead_of_the_trigger_never_moves_the_phase_back() {
    // `run` on another thread may go on as soon as it sees the trigger, while `trigger`
    // is still reporting it. The listener plays that thread: when told of the trigger, it
    // polls `run` as far as it can go. The phase must not move back to `Unhealthy` after.
    let events = Arc::new(Mutex::new(Vec::new()));
    let racing: Arc<Mutex<Option<Racing>>> = Arc::default();
    let (sink, runner) = (Arc::clone(&events), Arc::clone(&racing));
    let shutdown = Shutdown::builder()
        .listener(listener_fn(move |event: &ShutdownEvent| {
            sink.lock().unwrap().push(event.clone());
            if matches!(event, ShutdownEvent::Triggered { count: 1 }) {
                let run = runner.lock().unwrap().take().expect("run is set up");
                let run = run.poll();
                *runner.lock().unwrap() = Some(run);
            }
        }))
        .build();
    let run = Racing::Going(Box::pin({
        let shutdown = shutdown.clone();
        async move { shutdown.run().await }
    }))
    .poll();
    assert!(matches!(run, Racing::Going(_)), "waits for the trigger");
    *racing.lock().unwrap() = Some(run);

    shutdown.trigger();
    let raced = racing.lock().unwrap().take().unwrap();
    let report = match raced {
        Racing::Going(run) => run.await,
        Racing::Done(done) => done,
    };
    assert_eq!(report.unwrap().code(), 0);

    assert_eq!(shutdown.phase(), Phase::Done);
    assert_eq!(*shutdown.subscribe().borrow(), Phase::Done);
    tokio_test::assert_ready!(tokio_test::task::spawn(shutdown.wait_for(Phase::Done)).poll());
    let changes: Vec<(Phase, Phase)> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|event| match event {
            ShutdownEvent::PhaseChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    let expected: Vec<(Phase, Phase)> = Phase::ALL.windows(2).map(|w| (w[0], w[1])).collect();
    assert_eq!(changes, expected, "every phase once, in order");
}

#[tokio::test(start_paused = true)]
async fn a_second_trigger_while_the_first_is_reported_forces_the_stop() {
    // A second trigger that comes while the first is still being reported (here, from the
    // listener) is published with it: `run` starts forced, and the phases stay in order.
    let events = Arc::new(Mutex::new(Vec::new()));
    let coordinator: Arc<std::sync::OnceLock<Shutdown>> = Arc::default();
    let (sink, again) = (Arc::clone(&events), Arc::clone(&coordinator));
    let shutdown = Shutdown::builder()
        .grace(secs(60))
        .listener(listener_fn(move |event: &ShutdownEvent| {
            sink.lock().unwrap().push(event.clone());
            if matches!(event, ShutdownEvent::Triggered { count: 1 }) {
                again.get().expect("set up").trigger();
            }
        }))
        .build();
    coordinator.set(shutdown.clone()).unwrap();
    let run = spawn_run(&shutdown);
    tokio::task::yield_now().await;
    let triggered = Instant::now();
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert!(report.forced);
    assert_eq!(report.elapsed, Duration::ZERO, "no grace delay when forced");
    assert_eq!(triggered.elapsed(), Duration::ZERO);
    let events = events.lock().unwrap();
    assert_eq!(events[0], ShutdownEvent::Triggered { count: 1 });
    assert_eq!(events[1], ShutdownEvent::Triggered { count: 2 });
    let changes: Vec<(Phase, Phase)> = events
        .iter()
        .filter_map(|event| match event {
            ShutdownEvent::PhaseChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    let expected: Vec<(Phase, Phase)> = Phase::ALL.windows(2).map(|w| (w[0], w[1])).collect();
    assert_eq!(changes, expected);
}
