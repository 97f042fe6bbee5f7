//! `Batch`: the pool, retries, timeouts, isolation, stop, cancellation, groups and progress.
//! Time is tokio's paused clock throughout: delays are exact and nothing waits on real time.

use std::cell::{Cell, RefCell};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use palisade_batch::{
    Batch, BatchEvent, CancellationToken, ItemError, Order, Outcome, Progress, StopReason,
};
use palisade_core::Backoff;
use palisade_core::event::listener_fn;
use tokio::time::{Instant, sleep, timeout};

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

fn attempts(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A listener that keeps every event.
fn recorder() -> (
    Arc<Mutex<Vec<BatchEvent>>>,
    impl palisade_core::Listener<BatchEvent>,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    (
        events,
        listener_fn(move |e: &BatchEvent| sink.lock().unwrap().push(e.clone())),
    )
}

#[tokio::test(start_paused = true)]
async fn in_flight_count_never_exceeds_the_limit() {
    let in_flight = Cell::new(0usize);
    let peak = Cell::new(0usize);
    let report = Batch::new(nz(3))
        .run(0..50u64, async |n: &u64| {
            in_flight.set(in_flight.get() + 1);
            peak.set(peak.get().max(in_flight.get()));
            sleep(ms(1 + n % 7)).await;
            in_flight.set(in_flight.get() - 1);
            Ok::<_, ()>(*n)
        })
        .await;
    assert_eq!(report.succeeded.len(), 50);
    assert_eq!(peak.get(), 3);
    assert_eq!(in_flight.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_item_starts_as_soon_as_one_finishes() {
    // Item 0 is slow; with a limit of 2 the others run one after another beside it instead
    // of waiting for the slow one, as a chunked `for batch in chunks { join_all }` would.
    let start = Instant::now();
    let started = RefCell::new(Vec::new());
    Batch::new(nz(2))
        .run(0..5u64, async |n: &u64| {
            started.borrow_mut().push((*n, start.elapsed()));
            sleep(if *n == 0 { ms(100) } else { ms(10) }).await;
            Ok::<_, ()>(())
        })
        .await;
    let started = started.into_inner();
    assert_eq!(
        started,
        vec![
            (0, ms(0)),
            (1, ms(0)),
            (2, ms(10)),
            (3, ms(20)),
            (4, ms(30))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failures_are_isolated_and_reported_with_their_items() {
    let report = Batch::new(nz(4))
        .run(vec!["a", "bad-1", "c", "bad-2", "e"], async |s: &&str| {
            if s.starts_with("bad") {
                Err(format!("cannot take {s}"))
            } else {
                Ok(s.len())
            }
        })
        .await;
    assert_eq!(report.len(), 5);
    assert!(report.stopped.is_none());
    let ok: Vec<_> = report.succeeded.iter().map(|s| (s.index, s.item)).collect();
    assert_eq!(ok, [(0, "a"), (2, "c"), (4, "e")]);
    let failed: Vec<_> = report
        .failed
        .iter()
        .map(|f| (f.index, f.item, f.error.clone()))
        .collect();
    assert_eq!(
        failed,
        [
            (
                1,
                "bad-1",
                ItemError::Failed("cannot take bad-1".to_owned())
            ),
            (
                3,
                "bad-2",
                ItemError::Failed("cannot take bad-2".to_owned())
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn retries_are_counted_and_wait_the_backoff_delays() {
    let start = Instant::now();
    let calls = RefCell::new(Vec::new());
    let (events, listener) = recorder();
    let report = Batch::new(nz(2))
        .retry(
            attempts(4),
            Backoff::exponential(ms(100), 2.0, ms(1_000)).unwrap(),
        )
        .listener(listener)
        .run([0u32, 1], async |n: &u32| {
            calls.borrow_mut().push((*n, start.elapsed()));
            let tries = calls.borrow().iter().filter(|(m, _)| m == n).count();
            match (n, tries) {
                (0, t) if t < 3 => Err("flaky"),
                (0, _) => Ok("recovered"),
                _ => Err("always"),
            }
        })
        .await;

    assert_eq!(report.succeeded.len(), 1);
    assert_eq!(report.succeeded[0].attempts, 3);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].attempts, 4);
    assert_eq!(report.retries, 2 + 3);
    let item0: Vec<Duration> = calls
        .borrow()
        .iter()
        .filter(|(n, _)| *n == 0)
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(item0, [ms(0), ms(100), ms(300)]);

    let events = events.lock().unwrap();
    let retrying = events
        .iter()
        .filter(|e| matches!(e, BatchEvent::Retrying { .. }))
        .count();
    assert_eq!(retrying, 5);
    assert!(events.contains(&BatchEvent::ItemFailed {
        index: 1,
        attempts: 4
    }));
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_fails_and_is_retried() {
    let calls = Cell::new(0u32);
    let report = Batch::new(nz(1))
        .timeout(ms(50))
        .retry(attempts(2), Backoff::constant(ms(5)))
        .run([()], async |_: &()| {
            calls.set(calls.get() + 1);
            sleep(if calls.get() == 1 { ms(60_000) } else { ms(10) }).await;
            Ok::<_, ()>(calls.get())
        })
        .await;
    assert_eq!(report.succeeded[0].value, 2);
    assert_eq!(report.succeeded[0].attempts, 2);

    let report = Batch::new(nz(1))
        .timeout(ms(50))
        .run([()], async |_: &()| {
            sleep(ms(60_000)).await;
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(report.failed[0].error, ItemError::TimedOut(ms(50)));
    assert_eq!(report.elapsed, ms(50));
}

#[tokio::test(start_paused = true)]
async fn stop_on_error_interrupts_in_flight_items_and_starts_no_more() {
    let started = RefCell::new(Vec::new());
    let (events, listener) = recorder();
    let report = Batch::new(nz(3))
        .stop_on_error(true)
        .listener(listener)
        .run(0..100u32, async |n: &u32| {
            started.borrow_mut().push(*n);
            match n {
                1 => {
                    sleep(ms(10)).await;
                    Err("boom")
                }
                _ => {
                    sleep(ms(1_000)).await;
                    Ok(())
                }
            }
        })
        .await;
    assert_eq!(report.stopped, Some(StopReason::FirstError { index: 1 }));
    assert_eq!(*started.borrow(), [0, 1, 2]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].item, 1);
    let interrupted: Vec<u32> = report.interrupted.iter().map(|i| i.item).collect();
    assert_eq!(interrupted, [0, 2]);
    assert!(report.succeeded.is_empty());
    // The in-flight items were dropped at once, not awaited.
    assert_eq!(report.elapsed, ms(10));
    assert!(
        events
            .lock()
            .unwrap()
            .contains(&BatchEvent::Stopped(StopReason::FirstError { index: 1 }))
    );
}

#[tokio::test(start_paused = true)]
async fn cancellation_returns_the_finished_work() {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        sleep(ms(35)).await;
        cancel.cancel();
    });
    let mut items = (0..1_000u64).collect::<Vec<_>>().into_iter();
    let report = Batch::new(nz(2))
        .cancel_on(token)
        .retry(attempts(3), Backoff::constant(ms(1)))
        .run(items.by_ref(), async |n: &u64| {
            sleep(ms(10)).await;
            Ok::<_, ()>(n * 2)
        })
        .await;
    assert_eq!(report.stopped, Some(StopReason::Cancelled));
    // 0..6 finished at 10, 20, 30 ms; 6 and 7 were in flight at 35 ms.
    let values: Vec<u64> = report.succeeded.iter().map(|s| s.value).collect();
    assert_eq!(values, [0, 2, 4, 6, 8, 10]);
    let interrupted: Vec<u64> = report.interrupted.iter().map(|i| i.item).collect();
    assert_eq!(interrupted, [6, 7]);
    assert_eq!(report.elapsed, ms(35));
    // What was never taken is still in the iterator.
    assert_eq!(items.next(), Some(8));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_on_a_pending_stream_returns() {
    let token = CancellationToken::new();
    token.cancel();
    let report = Batch::new(nz(2))
        .cancel_on(token)
        .run_stream(futures_util::stream::pending::<u32>(), async |_: &u32| {
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(report.stopped, Some(StopReason::Cancelled));
    assert!(report.is_empty());
}

#[tokio::test(start_paused = true)]
async fn progress_is_monotone_and_reaches_the_total() {
    let (events, listener) = recorder();
    Batch::new(nz(4))
        .listener(listener)
        .run((0..40u64).collect::<Vec<_>>(), async |n: &u64| {
            sleep(ms(10 + n % 3)).await;
            if n % 10 == 9 { Err(()) } else { Ok(()) }
        })
        .await;
    let events = events.lock().unwrap();
    let progress: Vec<Progress> = events
        .iter()
        .filter_map(|e| match e {
            BatchEvent::Progress(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(progress.len(), 40);
    for pair in progress.windows(2) {
        assert_eq!(pair[1].done, pair[0].done + 1);
        assert!(pair[1].elapsed >= pair[0].elapsed);
        assert!(pair[1].fraction() >= pair[0].fraction());
    }
    let last = progress.last().unwrap();
    assert_eq!((last.done, last.total), (40, Some(40)));
    assert_eq!((last.succeeded, last.failed), (36, 4));
    assert_eq!(last.fraction(), Some(1.0));
    assert_eq!(last.eta(), Some(Duration::ZERO));
    assert!(last.per_second() > 0.0);
    let halfway = progress[19];
    assert!(halfway.eta().unwrap() > Duration::ZERO);
    assert!(matches!(
        events.last(),
        Some(BatchEvent::Finished { progress, stopped: None }) if progress.done == 40
    ));
}

#[tokio::test(start_paused = true)]
async fn groups_are_handed_out_in_input_order_once_complete() {
    let seen = RefCell::new(Vec::new());
    let report = Batch::new(nz(3))
        .on_batch(
            nz(4),
            |done: &palisade_batch::BatchDone<'_, u64, u64, &str>| {
                let items: Vec<u64> = done.outcomes().iter().map(|o| *o.item()).collect();
                seen.borrow_mut()
                    .push((done.index(), items, done.succeeded(), done.failed()));
            },
        )
        .run(0..10u64, async |n: &u64| {
            // Later items finish first.
            sleep(ms(100 - n * 10)).await;
            if *n == 5 { Err("five") } else { Ok(n * n) }
        })
        .await;
    assert_eq!(
        *seen.borrow(),
        [
            (0, vec![0, 1, 2, 3], 4, 0),
            (1, vec![4, 5, 6, 7], 3, 1),
            (2, vec![8, 9], 2, 0),
        ]
    );
    assert_eq!(report.len(), 10);
}

#[tokio::test(start_paused = true)]
async fn completion_order_hands_out_groups_and_results_as_they_finish() {
    let seen = RefCell::new(Vec::new());
    let report = Batch::new(nz(10))
        .order(Order::Completion)
        .on_batch(
            nz(5),
            |done: &palisade_batch::BatchDone<'_, u64, u64, ()>| {
                seen.borrow_mut().push(done.index());
            },
        )
        .run(0..10u64, async |n: &u64| {
            sleep(ms(100 - n * 10)).await;
            Ok(*n)
        })
        .await;
    assert_eq!(*seen.borrow(), [1, 0]);
    let values: Vec<u64> = report.into_values();
    assert_eq!(values, [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]);

    let report = Batch::new(nz(10))
        .order(Order::Completion)
        .run(0..4u64, async |n: &u64| {
            sleep(ms(100 - n * 10)).await;
            Ok::<_, ()>(*n)
        })
        .await;
    assert_eq!(report.into_values(), [3, 2, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_read_only_when_the_pool_has_room() {
    let pulled = Cell::new(0usize);
    let done = Cell::new(0usize);
    let max_ahead = Cell::new(0usize);
    let stream = futures_util::stream::iter(0..30u32).inspect(|_| {
        pulled.set(pulled.get() + 1);
        max_ahead.set(max_ahead.get().max(pulled.get() - done.get()));
    });
    let report = Batch::new(nz(4))
        .total(30)
        .run_stream(stream, async |_: &u32| {
            sleep(ms(5)).await;
            done.set(done.get() + 1);
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(report.succeeded.len(), 30);
    assert_eq!(max_ahead.get(), 4);
}

/// The futurelock scenario: item 1's retry needs a lock that item 0 holds across an await.
/// The retry can only proceed if item 0 keeps being polled while item 1 waits.
async fn futurelock_scenario(
    lock: &tokio::sync::Mutex<()>,
    tries: &Cell<u32>,
    n: u32,
) -> Result<u32, &'static str> {
    if n == 0 {
        let _held = lock.lock().await;
        sleep(ms(10)).await;
        return Ok(0);
    }
    tokio::task::yield_now().await; // let item 0 take the lock first
    tries.set(tries.get() + 1);
    if tries.get() == 1 {
        return Err("first attempt fails");
    }
    let _held = lock.lock().await;
    Ok(n)
}

#[tokio::test(start_paused = true)]
async fn no_in_flight_item_is_starved_while_another_is_retried() {
    let lock = tokio::sync::Mutex::new(());
    let tries = Cell::new(0);
    let run = Batch::new(nz(2))
        .retry(attempts(3), Backoff::constant(ms(1)))
        .run([0u32, 1], async |n: &u32| {
            futurelock_scenario(&lock, &tries, *n).await
        });
    let report = timeout(Duration::from_secs(60), run)
        .await
        .expect("an in-flight item was left unpolled: the run futurelocked");
    assert_eq!(report.into_values(), [0, 1]);
}

/// The control: the same scenario with the naive loop (`buffer_unordered`, and the retry
/// awaited inside the loop body) never finishes, which is what the test above guards against.
#[tokio::test(start_paused = true)]
async fn the_naive_buffered_loop_futurelocks_on_the_same_scenario() {
    let lock = tokio::sync::Mutex::new(());
    let tries = Cell::new(0);
    let naive = async {
        let mut results = futures_util::stream::iter([0u32, 1])
            .map(|n| {
                let (lock, tries) = (&lock, &tries);
                async move { (n, futurelock_scenario(lock, tries, n).await) }
            })
            .buffer_unordered(2);
        let mut values = Vec::new();
        while let Some((n, result)) = results.next().await {
            match result {
                Ok(v) => values.push(v),
                Err(_) => {
                    sleep(ms(1)).await;
                    values.push(futurelock_scenario(&lock, &tries, n).await.unwrap());
                }
            }
        }
        values
    };
    assert!(timeout(Duration::from_secs(60), naive).await.is_err());
}

#[test]
fn a_run_is_send_and_can_be_spawned() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let report = runtime.block_on(async {
        let names: Vec<String> = (0..20).map(|n| format!("user-{n}")).collect();
        tokio::spawn(
            Batch::new(nz(4))
                .retry(attempts(2), Backoff::constant(ms(1)))
                .timeout(Duration::from_secs(5))
                .cancel_on(CancellationToken::new())
                .run(names, async |name: &String| {
                    tokio::task::yield_now().await;
                    Ok::<_, String>(name.len())
                }),
        )
        .await
        .unwrap()
    });
    assert_eq!(report.succeeded.len(), 20);
    assert!(matches!(
        report.succeeded.first(),
        Some(s) if s.item == "user-0" && s.index == 0
    ));
}

#[tokio::test(start_paused = true)]
async fn an_empty_input_finishes_at_once() {
    let (events, listener) = recorder();
    let report = Batch::new(nz(2))
        .listener(listener)
        .on_batch(nz(3), |_: &palisade_batch::BatchDone<'_, u8, (), ()>| {
            panic!("no batch")
        })
        .run(Vec::<u8>::new(), async |_: &u8| Ok::<_, ()>(()))
        .await;
    assert!(report.is_empty());
    assert!(report.is_complete_success());
    assert_eq!(events.lock().unwrap().len(), 1);
    let _ = Outcome::<u8, (), ()>::Interrupted; // the variant is public
}
