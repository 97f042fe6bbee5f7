//! Attempts, delays and what is retried.

mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::classify::{DefaultClassify, Outcome, SlowAsFailure, classify_fn};
use palisade_retry::{Replay, RetryConfig, RetryEvent, RetryLayer};
use support::{Calls, Events};
use tower::{ServiceBuilder, ServiceExt};

fn attempts(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn always_failing(
    calls: Calls,
) -> impl tower::Service<&'static str, Response = &'static str, Error = BoxError, Future: Send> + Clone
{
    tower::service_fn(move |_: &'static str| {
        let n = calls.record();
        async move { Err::<&'static str, BoxError>(format!("failure {n}").into()) }
    })
}

#[tokio::test(start_paused = true)]
async fn delays_follow_the_backoff() {
    let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_millis(300))
        .unwrap()
        .with_jitter(Jitter::None);
    let config = RetryConfig::builder()
        .max_attempts(attempts(5))
        .backoff(backoff)
        .unbudgeted()
        .build()
        .unwrap();
    let calls = Calls::default();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(config))
        .service(always_failing(calls.clone()));

    let error = service.oneshot("ping").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "failure 5",
        "the last attempt's error is returned"
    );
    assert_eq!(
        calls.gaps(),
        [100, 200, 300, 300].map(Duration::from_millis)
    );
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_are_the_backoffs_own() {
    let backoff = Backoff::default().with_seed(42);
    assert_eq!(backoff.jitter(), Jitter::Full);
    let expected: Vec<Duration> = backoff.delays().take(3).collect();
    let config = RetryConfig::builder()
        .max_attempts(attempts(4))
        .backoff(backoff)
        .unbudgeted()
        .build()
        .unwrap();
    let calls = Calls::default();
    let service = RetryLayer::new(config).layer_service(always_failing(calls.clone()));

    service.oneshot("ping").await.unwrap_err();
    // tokio's timer fires on whole milliseconds: each delay ends at the next one.
    let rounded_up: Vec<Duration> = expected
        .iter()
        .map(|d| Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64))
        .collect();
    assert_eq!(calls.gaps(), rounded_up);
}

trait LayerService: Sized {
    fn layer_service<S>(self, service: S) -> <Self as tower::Layer<S>>::Service
    where
        Self: tower::Layer<S>,
    {
        tower::Layer::layer(&self, service)
    }
}
impl<L> LayerService for L {}

#[tokio::test(start_paused = true)]
async fn a_success_is_returned_at_once() {
    let calls = Calls::default();
    let counter = calls.clone();
    let service = RetryLayer::new(RetryConfig::default()).layer_service(tower::service_fn(
        move |_: &'static str| {
            counter.record();
            async { Ok::<_, BoxError>("pong") }
        },
    ));
    assert_eq!(service.oneshot("ping").await.unwrap(), "pong");
    assert_eq!(calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn recovers_when_a_retry_succeeds() {
    let calls = Calls::default();
    let counter = calls.clone();
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .build()
        .unwrap();
    let service =
        RetryLayer::new(config).layer_service(tower::service_fn(move |request: &'static str| {
            let n = counter.record();
            async move {
                if n < 3 {
                    Err::<_, BoxError>("unavailable".into())
                } else {
                    Ok(request)
                }
            }
        }));
    assert_eq!(service.oneshot("ping").await.unwrap(), "ping");
    assert_eq!(calls.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_and_reports_it() {
    let events = Events::default();
    let config = RetryConfig::builder()
        .max_attempts(attempts(3))
        .backoff(Backoff::constant(Duration::from_millis(50)))
        .listener(events.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    let service = RetryLayer::new(config).layer_service(always_failing(calls.clone()));
    let error = service.oneshot("ping").await.unwrap_err();
    assert_eq!(error.to_string(), "failure 3");
    assert_eq!(
        events.all(),
        [
            RetryEvent::Retrying {
                attempt: 2,
                delay: Duration::from_millis(50)
            },
            RetryEvent::Retrying {
                attempt: 3,
                delay: Duration::from_millis(50)
            },
            RetryEvent::GaveUp { attempts: 3 },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn one_attempt_means_no_retry() {
    let config = RetryConfig::builder()
        .max_attempts(attempts(1))
        .build()
        .unwrap();
    let calls = Calls::default();
    let service = RetryLayer::new(config).layer_service(always_failing(calls.clone()));
    service.oneshot("ping").await.unwrap_err();
    assert_eq!(calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_backoffs_own_attempt_limit_applies_too() {
    let config = RetryConfig::builder()
        .max_attempts(attempts(10))
        .backoff(Backoff::constant(Duration::from_millis(1)).with_max_attempts(attempts(2)))
        .build()
        .unwrap();
    let calls = Calls::default();
    let service = RetryLayer::new(config).layer_service(always_failing(calls.clone()));
    service.oneshot("ping").await.unwrap_err();
    assert_eq!(calls.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn only_failures_are_retried() {
    // "not found" is a client error: ignored, so not retried; "busy" is a failure.
    let classify = classify_fn(|result: Result<&&'static str, &BoxError>, _| match result {
        Ok(_) => Outcome::Success,
        Err(e) if e.to_string() == "not found" => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    });
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .build()
        .unwrap();
    let layer = RetryLayer::with_classifier(config, classify);

    for (message, expected) in [("not found", 1), ("busy", 3)] {
        let calls = Calls::default();
        let counter = calls.clone();
        let service = layer
            .clone()
            .layer_service(tower::service_fn(move |_: &'static str| {
                counter.record();
                async move { Err::<&'static str, BoxError>(message.into()) }
            }));
        let error = service.oneshot("ping").await.unwrap_err();
        assert_eq!(error.to_string(), message);
        assert_eq!(calls.count(), expected, "{message}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_success_is_retried_when_the_classifier_reads_durations() {
    // The first answer is a success, but slower than the classifier allows: a failure.
    let classify = SlowAsFailure::new(DefaultClassify, Duration::from_secs(1));
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .build()
        .unwrap();
    let calls = Calls::default();
    let counter = calls.clone();
    let service = RetryLayer::with_classifier(config, classify).layer_service(tower::service_fn(
        move |_: &'static str| {
            let n = counter.record();
            async move {
                if n == 1 {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Ok::<_, BoxError>(n)
            }
        },
    ));
    assert_eq!(service.oneshot("ping").await.unwrap(), 2);
    assert_eq!(calls.count(), 2);
}

/// Sends requests once: nothing is kept to send again.
#[derive(Clone, Copy)]
struct SendOnce;

impl<Req, Res> Replay<Req, Res> for SendOnce {
    fn replay(&self, _request: &Req) -> Option<Req> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_replayed_is_sent_once() {
    let events = Events::default();
    let config = RetryConfig::builder()
        .listener(events.clone())
        .build()
        .unwrap();
    let layer = RetryLayer::with_policy(config, palisade_core::DefaultClassify, SendOnce);
    let calls = Calls::default();
    let service = layer.layer_service(always_failing(calls.clone()));
    service.oneshot("ping").await.unwrap_err();
    assert_eq!(calls.count(), 1);
    assert_eq!(events.all(), [RetryEvent::GaveUp { attempts: 1 }]);
}

#[test]
fn invalid_settings_are_rejected_at_build() {
    use palisade_retry::{BudgetConfig, ConfigError};
    assert_eq!(
        RetryConfig::builder()
            .attempt_timeout(Duration::ZERO)
            .build()
            .unwrap_err(),
        ConfigError::ZeroAttemptTimeout
    );
    assert_eq!(
        RetryConfig::builder()
            .deadline(Duration::ZERO)
            .build()
            .unwrap_err(),
        ConfigError::ZeroDeadline
    );
    assert!(matches!(
        RetryConfig::builder()
            .budget(BudgetConfig::new(f64::NAN, 10, Duration::from_secs(10)))
            .build(),
        Err(ConfigError::InvalidBudgetRatio(_))
    ));
    assert_eq!(
        RetryConfig::builder()
            .budget(BudgetConfig::new(0.2, 10, Duration::from_millis(10)))
            .build()
            .unwrap_err(),
        ConfigError::InvalidBudgetTtl(Duration::from_millis(10))
    );
    let config = RetryConfig::default();
    assert_eq!(config.max_attempts().get(), 3);
    assert_eq!(config.backoff(), Backoff::default());
    assert_eq!(config.budget(), Some(BudgetConfig::default()));
}
