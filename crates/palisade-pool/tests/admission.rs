//! Who gets a permit and when: the limit, priority then arrival order, LIFO, aging, the
//! queue's bounds and timeout, cancelled waiters, and permits given back on every path.
//! Time is tokio's, paused.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::RetryAfter;
use palisade_core::event::listener_fn;
use palisade_pool::{Order, PoolConfig, PoolEvent, ShedReason};
use support::*;
use tower::{Service, ServiceExt};

#[tokio::test(start_paused = true)]
async fn calls_run_at_once_while_the_pool_has_room() {
    let log = Log::default();
    let layer = pool(PoolConfig::builder(nz(2)));
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let (a, release_a) = held("a");
    let (b, release_b) = held("b");
    let a = spawn_call(&mut service, a).await;
    let b = spawn_call(&mut service, b).await;
    settle().await;
    assert_eq!(started(&log), ["a", "b"]);
    assert_eq!((handle.in_flight(), handle.queued()), (2, 0));
    release_a.send(()).unwrap();
    release_b.send(()).unwrap();
    assert_eq!(a.await.unwrap().unwrap(), "a");
    assert_eq!(b.await.unwrap().unwrap(), "b");
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_by_priority_then_arrival() {
    let log = Log::default();
    let layer = pool(PoolConfig::builder(nz(1)).no_queue_timeout());
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let (first, release) = held("first");
    let first = spawn_call(&mut service, first).await;
    let mut waiters = Vec::new();
    for (name, priority) in [
        ("p9", 9),
        ("p5a", 5),
        ("p1a", 1),
        ("p5b", 5),
        ("p1b", 1),
        ("p0", 0),
    ] {
        waiters.push(spawn_call(&mut service, job(name, priority)).await);
    }
    settle().await;
    assert_eq!(handle.queued(), 6);
    assert_eq!(started(&log), ["first"]);

    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }
    assert_eq!(
        started(&log),
        ["first", "p0", "p1a", "p1b", "p5a", "p5b", "p9"]
    );
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn lifo_admits_the_newest_waiter_of_a_priority_first() {
    let log = Log::default();
    let layer = pool(
        PoolConfig::builder(nz(1))
            .no_queue_timeout()
            .order(Order::Lifo),
    );
    let mut service = service(&layer, &log);
    let (first, release) = held("first");
    let first = spawn_call(&mut service, first).await;
    let mut waiters = Vec::new();
    for (name, priority) in [("old5", 5), ("mid5", 5), ("p7", 7), ("new5", 5), ("p2", 2)] {
        waiters.push(spawn_call(&mut service, job(name, priority)).await);
    }
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }
    assert_eq!(started(&log), ["first", "p2", "new5", "mid5", "old5", "p7"]);
}

#[tokio::test(start_paused = true)]
async fn aging_lets_a_long_waiting_low_priority_call_overtake_fresh_urgent_ones() {
    for (aging, expected) in [
        (None, ["first", "fresh4", "fresh5", "old9"]),
        // After 4 steps of 1 s the 9 competes as a 5: after the fresh 4, which is still more
        // urgent, and, aged, before the fresh 5.
        (
            Some(Duration::from_secs(1)),
            ["first", "fresh4", "old9", "fresh5"],
        ),
    ] {
        let log = Log::default();
        let mut config = PoolConfig::builder(nz(1)).no_queue_timeout();
        if let Some(step) = aging {
            config = config.aging(step);
        }
        let layer = pool(config);
        let mut service = service(&layer, &log);
        let (first, release) = held("first");
        let first = spawn_call(&mut service, first).await;
        let old = spawn_call(&mut service, job("old9", 9)).await;
        tokio::time::advance(Duration::from_secs(4)).await;
        let fresh5 = spawn_call(&mut service, job("fresh5", 5)).await;
        let fresh4 = spawn_call(&mut service, job("fresh4", 4)).await;
        release.send(()).unwrap();
        for task in [first, old, fresh5, fresh4] {
            task.await.unwrap().unwrap();
        }
        assert_eq!(started(&log), expected, "aging: {aging:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_sheds_at_once_with_a_retry_after() {
    let log = Log::default();
    let layer = pool(
        PoolConfig::builder(nz(1))
            .queue_capacity(1)
            .retry_after(Duration::from_millis(2500)),
    );
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let (first, _release) = held("first");
    let _first = spawn_call(&mut service, first).await;
    let _waiting = spawn_call(&mut service, job("waiting", 5)).await;
    settle().await;

    let error = service
        .ready()
        .await
        .unwrap()
        .call(job("shed", 0))
        .await
        .unwrap_err();
    assert_eq!(
        overloaded(&error).retry_after(),
        Some(Duration::from_millis(2500))
    );
    assert_eq!(error.to_string(), "overloaded; retry in 2.5s");
    assert_eq!(
        started(&log),
        ["first"],
        "a shed call never reaches the service"
    );
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_zero_capacity_queue_sheds_every_call_that_finds_the_pool_full() {
    let log = Log::default();
    let layer = pool(PoolConfig::builder(nz(1)).queue_capacity(0));
    let mut service = service(&layer, &log);
    let (first, _release) = held("first");
    let _first = spawn_call(&mut service, first).await;
    let error = service
        .ready()
        .await
        .unwrap()
        .call(job("shed", 5))
        .await
        .unwrap_err();
    assert_eq!(
        overloaded(&error).retry_after(),
        Some(Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_that_waits_past_the_queue_timeout_is_shed_with_a_retry_after() {
    let log = Log::default();
    let layer = pool(
        PoolConfig::builder(nz(1))
            .queue_timeout(Duration::from_secs(2))
            .retry_after(Duration::from_secs(3)),
    );
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let (first, release) = held("first");
    let first = spawn_call(&mut service, first).await;
    let waiting = spawn_call(&mut service, job("late", 5)).await;
    settle().await;
    assert_eq!(handle.queued(), 1);

    tokio::time::advance(Duration::from_millis(1999)).await;
    settle().await;
    assert!(!waiting.is_finished(), "still within its queue timeout");
    tokio::time::advance(Duration::from_millis(1)).await;
    let error = waiting.await.unwrap().unwrap_err();
    assert_eq!(
        overloaded(&error).retry_after(),
        Some(Duration::from_secs(3))
    );
    assert_eq!(handle.queued(), 0);

    // The pool works on: the next call after the holder is admitted at once.
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    let next = service.ready().await.unwrap().call(job("next", 5)).await;
    assert_eq!(next.unwrap(), "next");
    assert_eq!(started(&log), ["first", "next"]);
}

#[tokio::test(start_paused = true)]
async fn a_queue_timeout_beyond_the_clock_lets_calls_wait_as_long_as_it_takes() {
    let log = Log::default();
    // `now + Duration::MAX` is no instant: the call must wait, not panic.
    let layer = pool(PoolConfig::builder(nz(1)).queue_timeout(Duration::MAX));
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let (first, release) = held("first");
    let first = spawn_call(&mut service, first).await;
    let waiting = spawn_call(&mut service, job("patient", 5)).await;
    settle().await;
    assert_eq!(handle.queued(), 1);

    tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
    settle().await;
    assert!(!waiting.is_finished(), "no timeout can pass");
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), "patient");
    assert_eq!(started(&log), ["first", "patient"]);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_leaves_the_queue() {
    let log = Log::default();
    let layer = pool(PoolConfig::builder(nz(1)).no_queue_timeout());
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let (first, release) = held("first");
    let first = spawn_call(&mut service, first).await;
    let cancelled = service.ready().await.unwrap().call(job("cancelled", 0));
    let kept = spawn_call(&mut service, job("kept", 5)).await;
    assert_eq!(handle.queued(), 2);

    drop(cancelled);
    assert_eq!(handle.queued(), 1);
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(kept.await.unwrap().unwrap(), "kept");
    assert_eq!(started(&log), ["first", "kept"]);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_permit_granted_to_a_waiter_dropped_before_it_noticed_goes_to_the_next() {
    let log = Log::default();
    let layer = pool(PoolConfig::builder(nz(1)).no_queue_timeout());
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let (first, release) = held("first");
    let first = spawn_call(&mut service, first).await;
    // Neither waiter is polled: `granted` is given the permit but never sees it.
    let granted = service.ready().await.unwrap().call(job("granted", 1));
    let next = service.ready().await.unwrap().call(job("next", 5));
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));

    drop(granted);
    assert_eq!((handle.in_flight(), handle.queued()), (1, 0));
    assert_eq!(next.await.unwrap(), "next");
    assert_eq!(started(&log), ["first", "next"]);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_permit_is_given_back_when_the_call_fails() {
    let log = Log::default();
    let layer = pool(PoolConfig::builder(nz(1)));
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let failing = Job {
        name: "failing",
        priority: 5,
        then: Then::Fail,
    };
    let error = service
        .ready()
        .await
        .unwrap()
        .call(failing)
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "job failed");
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(
        service
            .ready()
            .await
            .unwrap()
            .call(job("next", 5))
            .await
            .unwrap(),
        "next"
    );
}

#[tokio::test(start_paused = true)]
async fn the_permit_is_given_back_when_the_response_future_is_dropped() {
    let log = Log::default();
    let layer = pool(PoolConfig::builder(nz(1)));
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let (first, _release) = held("first");
    let mut running = tokio_test::task::spawn(service.ready().await.unwrap().call(first));
    // Started and pending.
    tokio_test::assert_pending!(running.poll());
    assert_eq!(handle.in_flight(), 1);
    drop(running);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_permit_is_given_back_when_the_inner_future_panics() {
    let log = Log::default();
    let layer = pool(PoolConfig::builder(nz(1)));
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let panicking = Job {
        name: "panicking",
        priority: 5,
        then: Then::Panic,
    };
    let task = spawn_call(&mut service, panicking).await;
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn calls_outlive_their_dropped_pool_without_disturbing_a_newer_one() {
    let log = Log::default();
    let old = pool(PoolConfig::builder(nz(2)));
    let mut old_service = service(&old, &log);
    let (a, release_a) = held("a");
    let (b, release_b) = held("b");
    let a = spawn_call(&mut old_service, a).await;
    let b = spawn_call(&mut old_service, b).await;
    settle().await;
    // Every owner of the old pool is gone; its two calls are still in flight.
    drop((old, old_service));

    let new = pool(PoolConfig::builder(nz(1)).no_queue_timeout());
    let handle = new.handle();
    let mut new_service = service(&new, &log);
    let (c, release_c) = held("c");
    let c = spawn_call(&mut new_service, c).await;
    let d = spawn_call(&mut new_service, job("d", 5)).await;
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));

    release_a.send(()).unwrap();
    release_b.send(()).unwrap();
    assert_eq!(a.await.unwrap().unwrap(), "a");
    assert_eq!(b.await.unwrap().unwrap(), "b");
    settle().await;
    // Their permits went back to their own pool, not to the new one.
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    assert_eq!(started(&log), ["a", "b", "c"]);

    release_c.send(()).unwrap();
    assert_eq!(c.await.unwrap().unwrap(), "c");
    assert_eq!(d.await.unwrap().unwrap(), "d");
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn raising_the_limit_admits_waiters_and_lowering_it_admits_nobody_until_calls_finish() {
    let log = Log::default();
    let layer = pool(PoolConfig::builder(nz(1)).no_queue_timeout());
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let mut releases = Vec::new();
    let mut tasks = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let (held, release) = held(name);
        releases.push(release);
        tasks.push(spawn_call(&mut service, held).await);
    }
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 3));

    assert_eq!(handle.set_limit(nz(3)).unwrap(), 1);
    settle().await;
    assert_eq!(started(&log), ["a", "b", "c"]);
    assert_eq!(
        (handle.in_flight(), handle.queued(), handle.limit()),
        (3, 1, 3)
    );

    // Lowered to 1: `d` waits until only... none are left in flight.
    handle.set_limit(nz(1)).unwrap();
    for release in releases.drain(..2) {
        release.send(()).unwrap();
    }
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    assert_eq!(started(&log), ["a", "b", "c"]);
    releases.remove(0).send(()).unwrap();
    settle().await;
    assert_eq!(started(&log), ["a", "b", "c", "d"]);
    assert_eq!((handle.in_flight(), handle.queued()), (1, 0));
    drop(releases);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_listener_sees_admissions_waits_sheds_and_releases() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let log = Log::default();
    let layer = pool(
        PoolConfig::builder(nz(1))
            .queue_capacity(1)
            .queue_timeout(Duration::from_secs(5))
            .listener(listener_fn(move |event: &PoolEvent| {
                sink.lock().unwrap().push(*event);
            })),
    );
    let handle = layer.handle();
    let mut service = service(&layer, &log);
    let (first, release) = held("first");
    let first = spawn_call(&mut service, first).await;
    let waiting = spawn_call(&mut service, job("waiting", 3)).await;
    let shed = service.ready().await.unwrap().call(job("shed", 7)).await;
    assert!(shed.is_err());
    tokio::time::advance(Duration::from_millis(1500)).await;
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    waiting.await.unwrap().unwrap();
    handle.set_limit(nz(4)).unwrap();

    let events = events.lock().unwrap().clone();
    let p = palisade_pool::Priority::new;
    assert_eq!(
        events,
        [
            PoolEvent::Admitted {
                waited: Duration::ZERO,
                in_flight: 1
            },
            PoolEvent::Queued {
                priority: p(3),
                queued: 1
            },
            PoolEvent::Shed {
                priority: p(7),
                reason: ShedReason::QueueFull,
                retry_after: Duration::from_secs(1),
                queued: 1
            },
            // `first` ends; its permit goes straight to the waiter.
            PoolEvent::Released { in_flight: 1 },
            PoolEvent::Admitted {
                waited: Duration::from_millis(1500),
                in_flight: 1
            },
            PoolEvent::Released { in_flight: 0 },
            PoolEvent::LimitChanged { from: 1, to: 4 },
        ]
    );
}
