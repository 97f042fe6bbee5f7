//! Classify: table tests for results, slow calls and HTTP statuses.

use std::time::Duration;

use palisade_core::classify::{Classify, DefaultClassify, Outcome, SlowAsFailure, classify_fn};

const FAST: Duration = Duration::from_millis(10);
const THRESHOLD: Duration = Duration::from_millis(500);

#[test]
fn default_classify_fails_errors_and_ignores_duration() {
    let table: [(Result<u8, &str>, Duration, Outcome); 4] = [
        (Ok(1), FAST, Outcome::Success),
        (Ok(1), Duration::from_secs(3600), Outcome::Success),
        (Err("boom"), FAST, Outcome::Failure),
        (Err("boom"), Duration::ZERO, Outcome::Failure),
    ];
    for (result, elapsed, expected) in table {
        assert_eq!(
            DefaultClassify.classify(result.as_ref(), elapsed),
            expected,
            "{result:?} after {elapsed:?}"
        );
    }
}

#[test]
fn slow_successes_become_failures_from_the_threshold_on() {
    let classify = SlowAsFailure::new(DefaultClassify, THRESHOLD);
    assert_eq!(classify.threshold(), THRESHOLD);
    let table: [(Result<u8, &str>, Duration, Outcome); 6] = [
        (Ok(1), FAST, Outcome::Success),
        (Ok(1), THRESHOLD - Duration::from_nanos(1), Outcome::Success),
        (Ok(1), THRESHOLD, Outcome::Failure),
        (Ok(1), Duration::from_secs(5), Outcome::Failure),
        (Err("boom"), FAST, Outcome::Failure),
        (Err("boom"), Duration::from_secs(5), Outcome::Failure),
    ];
    for (result, elapsed, expected) in table {
        assert_eq!(
            classify.classify(result.as_ref(), elapsed),
            expected,
            "{result:?} after {elapsed:?}"
        );
    }
}

#[test]
fn slow_wrapper_leaves_ignored_outcomes_ignored() {
    let ignore_even = classify_fn(|result: Result<&u8, &&str>, _| match result {
        Ok(n) if n % 2 == 0 => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    });
    let classify = SlowAsFailure::new(ignore_even, THRESHOLD);
    let slow = Duration::from_secs(1);
    assert_eq!(classify.classify(Ok(&2), slow), Outcome::Ignored);
    assert_eq!(classify.classify(Ok(&3), slow), Outcome::Failure);
    assert_eq!(classify.classify(Ok(&3), FAST), Outcome::Success);
}

#[cfg(feature = "http")]
mod http_status {
    use super::*;
    use http::{Response, StatusCode};
    use palisade_core::classify::StatusClassify;

    fn outcome(classify: &StatusClassify, status: u16, elapsed: Duration) -> Outcome {
        let response = Response::builder().status(status).body(()).unwrap();
        Classify::<_, std::io::Error>::classify(classify, Ok(&response), elapsed)
    }

    #[test]
    fn default_fails_5xx_and_429_and_passes_the_rest() {
        let classify = StatusClassify::default();
        let table = [
            (100, Outcome::Success),
            (200, Outcome::Success),
            (204, Outcome::Success),
            (301, Outcome::Success),
            (400, Outcome::Success),
            (404, Outcome::Success),
            (408, Outcome::Success),
            (428, Outcome::Success),
            (429, Outcome::Failure),
            (430, Outcome::Success),
            (499, Outcome::Success),
            (500, Outcome::Failure),
            (501, Outcome::Failure),
            (502, Outcome::Failure),
            (503, Outcome::Failure),
            (504, Outcome::Failure),
            (599, Outcome::Failure),
            (600, Outcome::Success),
            (999, Outcome::Success),
        ];
        for (status, expected) in table {
            assert_eq!(
                outcome(&classify, status, FAST),
                expected,
                "status {status}"
            );
        }
    }

    #[test]
    fn transport_errors_are_failures() {
        let error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let outcome =
            Classify::<Response<()>, _>::classify(&StatusClassify::default(), Err(&error), FAST);
        assert_eq!(outcome, Outcome::Failure);
    }

    #[test]
    fn any_status_can_be_reassigned_and_the_last_assignment_wins() {
        let classify = StatusClassify::default()
            .with(StatusCode::NOT_IMPLEMENTED, Outcome::Ignored)
            .with(StatusCode::REQUEST_TIMEOUT, Outcome::Failure)
            .with(StatusCode::TOO_MANY_REQUESTS, Outcome::Ignored)
            .with(StatusCode::TOO_MANY_REQUESTS, Outcome::Success);
        assert_eq!(outcome(&classify, 501, FAST), Outcome::Ignored);
        assert_eq!(outcome(&classify, 408, FAST), Outcome::Failure);
        assert_eq!(outcome(&classify, 429, FAST), Outcome::Success);
        assert_eq!(outcome(&classify, 500, FAST), Outcome::Failure);

        let only_errors = StatusClassify::all_success();
        assert_eq!(outcome(&only_errors, 503, FAST), Outcome::Success);
        assert_eq!(
            only_errors.outcome(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::Success
        );
    }

    #[test]
    fn slow_http_successes_count_as_failures_when_wrapped() {
        let classify = SlowAsFailure::new(StatusClassify::default(), THRESHOLD);
        let slow = Duration::from_secs(2);
        let response = |status: u16| Response::builder().status(status).body(()).unwrap();
        let classify_at = |status, elapsed| {
            Classify::<_, std::io::Error>::classify(&classify, Ok(&response(status)), elapsed)
        };
        assert_eq!(classify_at(200, FAST), Outcome::Success);
        assert_eq!(classify_at(200, slow), Outcome::Failure);
        assert_eq!(classify_at(404, slow), Outcome::Failure);
        assert_eq!(classify_at(503, FAST), Outcome::Failure);
    }

    #[test]
    fn debug_lists_the_reassigned_codes() {
        let classify = StatusClassify::all_success()
            .with(StatusCode::BAD_GATEWAY, Outcome::Failure)
            .with(StatusCode::NOT_FOUND, Outcome::Ignored);
        assert_eq!(
            format!("{classify:?}"),
            "StatusClassify { failure: [502], ignored: [404] }"
        );
    }
}

#[test]
fn only_classifiers_that_read_the_duration_ask_for_it() {
    assert!(!Classify::<u8, ()>::uses_elapsed(&DefaultClassify));
    let slow = SlowAsFailure::new(DefaultClassify, THRESHOLD);
    assert!(Classify::<u8, ()>::uses_elapsed(&slow));
    let custom = classify_fn(|_: Result<&u8, &()>, _| Outcome::Success);
    assert!(
        custom.uses_elapsed(),
        "unknown closures are assumed to read it"
    );
    #[cfg(feature = "http")]
    assert!(!Classify::<http::Response<()>, ()>::uses_elapsed(
        &palisade_core::classify::StatusClassify::default()
    ));
}
