//! The breaker's state machine, driven on tokio's paused clock.

mod support;

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_breaker::{BreakerEvent, CircuitBreakerConfig, ConfigError, State};
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::event::listener_fn;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use support::{Call, assert_state, breaker, call, rejected, run};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Count window of 10, at least 5 calls, 50 %, open for a constant 10 s, 3 probes.
fn config() -> palisade_breaker::CircuitBreakerConfigBuilder {
    CircuitBreakerConfig::builder()
        .count_window(nz(10))
        .min_calls(5)
        .failure_rate(50.0)
        .open_wait(Backoff::constant(secs(10)))
        .half_open_probes(nz(3))
}

#[tokio::test(start_paused = true)]
async fn does_not_trip_before_the_minimum_number_of_calls() {
    let (service, handle, _) = breaker(config().build().unwrap());
    run(&service, Call::Fail, 4).await;
    assert_state(&handle, State::Closed);
    let metrics = handle.metrics();
    assert_eq!((metrics.calls, metrics.failures), (4, 4));
    run(&service, Call::Fail, 1).await;
    assert_state(&handle, State::Open);
}

#[tokio::test(start_paused = true)]
async fn trips_when_the_failure_rate_reaches_the_threshold_and_not_below() {
    let (service, handle, _) = breaker(config().build().unwrap());
    run(&service, Call::Ok, 5).await;
    run(&service, Call::Fail, 4).await;
    // 4 of 9: 44 %.
    assert_state(&handle, State::Closed);
    assert!((handle.metrics().failure_rate() - 400.0 / 9.0).abs() < 1e-9);
    run(&service, Call::Fail, 1).await;
    // 5 of 10: 50 %.
    assert_state(&handle, State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_count_window_forgets_calls_older_than_its_size() {
    let (service, handle, _) = breaker(config().build().unwrap());
    run(&service, Call::Ok, 6).await;
    run(&service, Call::Fail, 4).await;
    assert_eq!(handle.metrics().failures, 4);
    run(&service, Call::Ok, 10).await;
    // The four failures have left the window.
    assert_eq!(handle.metrics().failures, 0);
    run(&service, Call::Fail, 4).await;
    assert_state(&handle, State::Closed);
    assert_eq!((handle.metrics().calls, handle.metrics().failures), (10, 4));
}

#[tokio::test(start_paused = true)]
async fn open_rejects_without_calling_and_says_how_long_is_left() {
    let (service, handle, reached) = breaker(config().build().unwrap());
    run(&service, Call::Fail, 5).await;
    assert_state(&handle, State::Open);
    let before = reached.load(Ordering::SeqCst);

    tokio::time::advance(secs(3)).await;
    assert_eq!(rejected(&service, Call::Ok).await, secs(7));
    tokio::time::advance(Duration::from_millis(6500)).await;
    assert_eq!(
        rejected(&service, Call::Ok).await,
        Duration::from_millis(500)
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        before,
        "no call reached the upstream"
    );
    assert_eq!(handle.metrics().rejections, 2);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_n_of_100_concurrent_callers() {
    let (service, handle, reached) = breaker(config().build().unwrap());
    run(&service, Call::Fail, 5).await;
    tokio::time::advance(secs(10)).await;
    let before = reached.load(Ordering::SeqCst);

    let gate = Arc::new(Semaphore::new(0));
    let mut callers = JoinSet::new();
    for _ in 0..100 {
        let (service, gate) = (service.clone(), Arc::clone(&gate));
        callers.spawn(async move { call(&service, Call::Gated(gate)).await });
    }
    // Let every caller reach the breaker; the probes then wait at the gate.
    while reached.load(Ordering::SeqCst) < before + 3 {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_state(&handle, State::HalfOpen);
    gate.add_permits(100);
    let (mut admitted, mut rejected) = (0, 0);
    while let Some(result) = callers.join_next().await {
        match result.unwrap() {
            Ok(outcome) => {
                assert_eq!(outcome, Ok("gated"));
                admitted += 1;
            }
            Err(_) => rejected += 1,
        }
    }
    assert_eq!((admitted, rejected), (3, 97));
    assert_eq!(reached.load(Ordering::SeqCst), before + 3);
    assert_state(&handle, State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_its_slot_and_records_nothing() {
    let (service, handle, reached) = breaker(config().half_open_probes(nz(1)).build().unwrap());
    run(&service, Call::Fail, 5).await;
    tokio::time::advance(secs(10)).await;

    let gate = Arc::new(Semaphore::new(0));
    let probe = tokio::spawn({
        let (service, gate) = (service.clone(), Arc::clone(&gate));
        async move { call(&service, Call::Gated(gate)).await }
    });
    let before = reached.load(Ordering::SeqCst);
    while reached.load(Ordering::SeqCst) == before {
        tokio::task::yield_now().await;
    }
    // The only slot is taken.
    rejected(&service, Call::Ok).await;
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());
    assert_state(&handle, State::HalfOpen);

    // The slot is free again; this probe's success closes the breaker.
    assert_eq!(call(&service, Call::Ok).await.unwrap(), Ok("ok"));
    assert_state(&handle, State::Closed);
}

#[tokio::test(start_paused = true)]
async fn n_successful_probes_close_and_clear_the_window() {
    let (service, handle, _) = breaker(config().build().unwrap());
    run(&service, Call::Fail, 5).await;
    tokio::time::advance(secs(10)).await;
    run(&service, Call::Ok, 2).await;
    assert_state(&handle, State::HalfOpen);
    run(&service, Call::Ok, 1).await;
    assert_state(&handle, State::Closed);
    assert_eq!(
        handle.metrics().calls,
        0,
        "a closed breaker starts with an empty window"
    );
}

#[tokio::test(start_paused = true)]
async fn one_failed_probe_reopens() {
    let (service, handle, _) = breaker(config().build().unwrap());
    run(&service, Call::Fail, 5).await;
    tokio::time::advance(secs(10)).await;
    run(&service, Call::Ok, 2).await;
    run(&service, Call::Fail, 1).await;
    assert_state(&handle, State::Open);
    assert_eq!(rejected(&service, Call::Ok).await, secs(10));
}

#[tokio::test(start_paused = true)]
async fn the_open_wait_grows_on_repeated_trips_and_restarts_after_closing() {
    let backoff = Backoff::exponential(secs(1), 2.0, secs(60))
        .unwrap()
        .with_jitter(Jitter::None);
    let config = config().open_wait(backoff).half_open_probes(nz(1));
    let (service, handle, _) = breaker(config.build().unwrap());
    run(&service, Call::Fail, 5).await;
    for wait in [1, 2, 4, 8] {
        assert_eq!(rejected(&service, Call::Ok).await, secs(wait));
        tokio::time::advance(secs(wait)).await;
        // The probe fails: open again, for longer.
        run(&service, Call::Fail, 1).await;
    }
    assert_eq!(rejected(&service, Call::Ok).await, secs(16));
    tokio::time::advance(secs(16)).await;
    run(&service, Call::Ok, 1).await;
    assert_state(&handle, State::Closed);

    run(&service, Call::Fail, 5).await;
    assert_eq!(
        rejected(&service, Call::Ok).await,
        secs(1),
        "closing restarts the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn jittered_open_waits_stay_within_the_backoff() {
    let backoff = Backoff::exponential(secs(4), 2.0, secs(60))
        .unwrap()
        .with_jitter(Jitter::Equal);
    let (service, _, _) = breaker(config().open_wait(backoff).build().unwrap());
    run(&service, Call::Fail, 5).await;
    let wait = rejected(&service, Call::Ok).await;
    assert!(wait >= secs(2) && wait <= secs(4), "{wait:?}");
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_calls_older_than_its_span() {
    let config = CircuitBreakerConfig::builder()
        .time_window(secs(10), nz(10))
        .min_calls(4)
        .failure_rate(50.0)
        .build()
        .unwrap();
    let (service, handle, _) = breaker(config);
    run(&service, Call::Fail, 2).await;
    tokio::time::advance(secs(10)).await;
    assert_eq!(
        handle.metrics().calls,
        0,
        "the first bucket has left the window"
    );
    // Had the two failures stayed, the fourth of these calls would trip at 4 of 6.
    run(&service, Call::Ok, 2).await;
    run(&service, Call::Fail, 1).await;
    assert_state(&handle, State::Closed);
    run(&service, Call::Fail, 1).await;
    assert_state(&handle, State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_counts_calls_across_its_buckets() {
    let config = CircuitBreakerConfig::builder()
        .time_window(secs(10), nz(10))
        .min_calls(4)
        .failure_rate(80.0)
        .build()
        .unwrap();
    let (service, handle, _) = breaker(config);
    for _ in 0..3 {
        run(&service, Call::Fail, 1).await;
        tokio::time::advance(secs(3)).await;
    }
    // Failures at 0 s, 3 s, 6 s; now 9 s: all in the window.
    assert_eq!(handle.metrics().calls, 3);
    run(&service, Call::Ok, 1).await;
    // 3 of 4 = 75 %.
    assert_state(&handle, State::Closed);
    run(&service, Call::Fail, 1).await;
    // 4 of 5 = 80 %.
    assert_state(&handle, State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_breaker_at_their_own_rate() {
    let config = CircuitBreakerConfig::builder()
        .count_window(nz(4))
        .min_calls(4)
        .failure_rate(100.0)
        .slow_calls(secs(1), 50.0)
        .build()
        .unwrap();
    let (service, handle, _) = breaker(config);
    run(&service, Call::Ok, 2).await;
    run(&service, Call::Slow(Duration::from_millis(999)), 1).await;
    run(&service, Call::Slow(secs(1)), 1).await;
    assert_state(&handle, State::Closed);
    assert_eq!(handle.metrics().slow_calls, 1);
    run(&service, Call::Slow(secs(2)), 1).await;
    // Slow: 1 s and 2 s of the last four = 50 %.
    assert_state(&handle, State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_reopens() {
    let config = config().slow_calls(secs(1), 100.0).half_open_probes(nz(1));
    let (service, handle, _) = breaker(config.build().unwrap());
    run(&service, Call::Fail, 5).await;
    tokio::time::advance(secs(10)).await;
    run(&service, Call::Slow(secs(5)), 1).await;
    assert_state(&handle, State::Open);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_only_when_in_a_row() {
    let config = CircuitBreakerConfig::builder()
        .consecutive_failures(nz(3))
        .build()
        .unwrap();
    let (service, handle, _) = breaker(config);
    run(&service, Call::Fail, 2).await;
    run(&service, Call::Ok, 1).await;
    run(&service, Call::Fail, 2).await;
    assert_state(&handle, State::Closed);
    run(&service, Call::Fail, 1).await;
    assert_state(&handle, State::Open);
}

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_everything_until_reset() {
    let (service, handle, reached) = breaker(config().build().unwrap());
    handle.force_open();
    assert_state(&handle, State::ForcedOpen);
    tokio::time::advance(secs(3600)).await;
    rejected(&service, Call::Ok).await;
    assert_eq!(reached.load(Ordering::SeqCst), 0);
    handle.reset();
    run(&service, Call::Ok, 1).await;
    assert_state(&handle, State::Closed);
}

#[tokio::test(start_paused = true)]
async fn disabled_lets_everything_through_and_records_nothing() {
    let (service, handle, _) = breaker(config().build().unwrap());
    handle.disable();
    run(&service, Call::Fail, 50).await;
    assert_state(&handle, State::Disabled);
    assert_eq!(handle.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_records_but_never_trips() {
    let (service, handle, _) = breaker(config().build().unwrap());
    handle.metrics_only();
    run(&service, Call::Fail, 50).await;
    assert_state(&handle, State::MetricsOnly);
    let metrics = handle.metrics();
    assert_eq!((metrics.calls, metrics.failures), (10, 10));
    handle.reset();
    assert_eq!(handle.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn handle_trip_opens_with_the_next_wait() {
    let (service, handle, _) = breaker(config().build().unwrap());
    handle.trip();
    assert_eq!(rejected(&service, Call::Ok).await, secs(10));
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_count_for_nothing() {
    use palisade_breaker::CircuitBreakerLayer;
    use palisade_core::classify::{Outcome, classify_fn};
    use tower::{Layer, ServiceExt};

    // 404-like errors say nothing about the upstream's health.
    let classify = classify_fn(|result: Result<&&str, &&str>, _| match result {
        Ok(_) => Outcome::Success,
        Err(e) if e.contains("not found") => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    });
    let layer = CircuitBreakerLayer::with_classifier(config().build().unwrap(), classify);
    let handle = layer.handle();
    let service = layer.layer(tower::service_fn(|fail: bool| async move {
        if fail {
            Err("upstream failed")
        } else {
            Err("not found")
        }
    }));
    for _ in 0..20 {
        assert!(service.clone().oneshot(false).await.is_err());
    }
    assert_state(&handle, State::Closed);
    assert_eq!(handle.metrics().calls, 0);
    for _ in 0..5 {
        assert!(service.clone().oneshot(true).await.is_err());
    }
    assert_state(&handle, State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_call_admitted_before_a_trip_does_not_count_after_it() {
    let (service, handle, _) = breaker(config().half_open_probes(nz(1)).build().unwrap());
    let gate = Arc::new(Semaphore::new(0));
    let slow = tokio::spawn({
        let (service, gate) = (service.clone(), Arc::clone(&gate));
        async move { call(&service, Call::Gated(gate)).await }
    });
    tokio::task::yield_now().await;
    run(&service, Call::Fail, 5).await;
    tokio::time::advance(secs(10)).await;
    run(&service, Call::Ok, 1).await;
    assert_state(&handle, State::Closed);
    // The call admitted in the first closed period completes now: it counts nowhere.
    gate.add_permits(1);
    assert_eq!(slow.await.unwrap().unwrap(), Ok("gated"));
    assert_eq!(handle.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_call_counts_as_a_failure_and_frees_its_probe() {
    let (service, handle, _) = breaker(config().half_open_probes(nz(1)).build().unwrap());
    run(&service, Call::Fail, 4).await;
    let panicked = tokio::spawn({
        let service = service.clone();
        async move { call(&service, Call::Panic).await }
    });
    assert!(panicked.await.unwrap_err().is_panic());
    assert_state(&handle, State::Open);

    tokio::time::advance(secs(10)).await;
    let panicked = tokio::spawn({
        let service = service.clone();
        async move { call(&service, Call::Panic).await }
    });
    assert!(panicked.await.unwrap_err().is_panic());
    // The probe failed: open again, not wedged in half-open.
    assert_state(&handle, State::Open);
    tokio::time::advance(secs(10)).await;
    run(&service, Call::Ok, 1).await;
    assert_state(&handle, State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_inner_call_panics_frees_its_slot() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use tower::{Layer, Service, ServiceExt};

    let layer = palisade_breaker::CircuitBreakerLayer::new(
        config().half_open_probes(nz(1)).build().unwrap(),
    );
    let handle = layer.handle();
    // `call` itself panics, before there is a future to poll.
    let mut service = layer.layer(tower::service_fn(|panic: bool| {
        assert!(!panic, "the inner service's call panicked");
        std::future::ready(Ok::<_, &'static str>("ok"))
    }));
    handle.trip();
    tokio::time::advance(secs(10)).await;

    let ready = service.ready().await.unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| ready.call(true))).is_err());
    // The probe was cancelled, not lost: its slot takes the next call, which closes.
    assert_state(&handle, State::HalfOpen);
    assert_eq!(
        service.ready().await.unwrap().call(false).await.unwrap(),
        "ok"
    );
    assert_state(&handle, State::Closed);
}

#[tokio::test(start_paused = true)]
async fn listeners_hear_state_changes_and_rejections() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let config = config()
        .name("payments")
        .half_open_probes(nz(1))
        .listener(listener_fn(move |event: &BreakerEvent| {
            sink.lock().unwrap().push(event.clone());
        }));
    let (service, _, _) = breaker(config.build().unwrap());
    run(&service, Call::Fail, 5).await;
    rejected(&service, Call::Ok).await;
    tokio::time::advance(secs(10)).await;
    run(&service, Call::Ok, 1).await;

    let summary: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|event| match event {
            BreakerEvent::StateChanged {
                name,
                from,
                to,
                open_for,
            } => {
                format!("{name}: {from} -> {to} {open_for:?}")
            }
            BreakerEvent::Rejected {
                name,
                state,
                retry_after,
            } => {
                format!("{name}: rejected in {state}, retry in {retry_after:?}")
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "payments: closed -> open Some(10s)",
            "payments: rejected in open, retry in 10s",
            "payments: open -> half_open None",
            "payments: half_open -> closed None",
        ]
    );
}

#[test]
fn invalid_configurations_are_typed_errors() {
    let cases: Vec<(palisade_breaker::CircuitBreakerConfigBuilder, ConfigError)> = vec![
        (
            CircuitBreakerConfig::builder().failure_rate(0.0),
            ConfigError::InvalidRate {
                what: "failure rate",
                value: 0.0,
            },
        ),
        (
            CircuitBreakerConfig::builder().failure_rate(100.5),
            ConfigError::InvalidRate {
                what: "failure rate",
                value: 100.5,
            },
        ),
        (
            CircuitBreakerConfig::builder()
                .count_window(nz(10))
                .min_calls(11),
            ConfigError::InvalidMinCalls {
                value: 11,
                window: 10,
            },
        ),
        (
            CircuitBreakerConfig::builder().min_calls(0),
            ConfigError::InvalidMinCalls {
                value: 0,
                window: 100,
            },
        ),
        (
            CircuitBreakerConfig::builder()
                .count_window(nz(2_000_000))
                .min_calls(1),
            ConfigError::WindowTooLarge(2_000_000),
        ),
        (
            CircuitBreakerConfig::builder().time_window(Duration::from_millis(5), nz(10)),
            ConfigError::InvalidTimeWindow {
                span: Duration::from_millis(5),
                buckets: 10,
            },
        ),
        (
            CircuitBreakerConfig::builder().slow_calls(Duration::ZERO, 50.0),
            ConfigError::ZeroSlowThreshold,
        ),
        (
            CircuitBreakerConfig::builder().slow_calls(secs(1), f64::NAN),
            ConfigError::InvalidRate {
                what: "slow-call rate",
                value: f64::NAN,
            },
        ),
        (
            CircuitBreakerConfig::builder()
                .consecutive_failures(nz(3))
                .slow_calls(secs(1), 50.0),
            ConfigError::SlowCallsNeedWindow,
        ),
        (
            CircuitBreakerConfig::builder().half_open_probes(nz(10_001)),
            ConfigError::TooManyProbes(10_001),
        ),
        (
            CircuitBreakerConfig::builder()
                .open_wait(Backoff::constant(secs(1)).with_max_attempts(nz(1))),
            ConfigError::NoOpenWait,
        ),
    ];
    for (builder, expected) in cases {
        let error = builder.build().unwrap_err();
        // NaN != NaN: compare the messages.
        assert_eq!(error.to_string(), expected.to_string());
    }
}

#[test]
fn the_default_configuration_is_documented_and_valid() {
    let config = CircuitBreakerConfig::default();
    assert_eq!(config.half_open_probes(), nz(3));
    assert_eq!(config.name(), "circuit_breaker");
}

#[tokio::test(start_paused = true)]
async fn a_per_service_layer_gives_each_service_its_own_breaker() {
    use palisade_breaker::CircuitBreakerLayer;
    use tower::{Layer, ServiceExt};

    let layer = CircuitBreakerLayer::per_service(
        CircuitBreakerConfig::builder()
            .consecutive_failures(nz(2))
            .build()
            .unwrap(),
    );
    let upstream = |fail: bool| async move { if fail { Err("down") } else { Ok("up") } };
    let a = layer.layer(tower::service_fn(upstream));
    let b = layer.layer(tower::service_fn(upstream));
    for _ in 0..2 {
        assert!(a.clone().oneshot(true).await.is_err());
    }
    assert_eq!(a.handle().state(), State::Open);
    // A clone of `a` shares its breaker; `b` has its own, still closed.
    assert_eq!(a.clone().handle().state(), State::Open);
    assert_eq!(b.handle().state(), State::Closed);
    assert_eq!(b.clone().oneshot(false).await.unwrap(), "up");
}
