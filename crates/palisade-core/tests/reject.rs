//! Rejections: messages, retry-after, recognition inside boxed and wrapped errors, responses.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::reject::{
    CircuitOpen, Overloaded, RateLimited, Rejection, RetryAfter, ShuttingDown,
};

#[test]
fn messages_are_lowercase_and_say_when_to_retry() {
    assert_eq!(
        CircuitOpen::new(Duration::from_millis(2500)).to_string(),
        "circuit open; retry in 2.5s"
    );
    assert_eq!(
        RateLimited::new(Duration::from_secs(1)).to_string(),
        "rate limited; retry in 1s"
    );
    assert_eq!(Overloaded::new().to_string(), "overloaded");
    assert_eq!(
        Overloaded::new()
            .with_retry_after(Duration::from_millis(50))
            .to_string(),
        "overloaded; retry in 50ms"
    );
    assert_eq!(ShuttingDown::new().to_string(), "shutting down");
}

#[test]
fn every_rejection_reports_its_retry_after() {
    let d = Duration::from_millis(300);
    assert_eq!(CircuitOpen::new(d).retry_after(), Some(d));
    assert_eq!(RateLimited::new(d).retry_after(), Some(d));
    assert_eq!(Overloaded::new().retry_after(), None);
    assert_eq!(
        Overloaded::default().with_retry_after(d).retry_after(),
        Some(d)
    );
    assert_eq!(ShuttingDown::default().retry_after(), None);
    assert_eq!(
        ShuttingDown::new().with_retry_after(d).retry_after(),
        Some(d)
    );
}

/// A user's error that wraps a rejection as its source, as `tower::buffer` or an
/// application error type would.
#[derive(Debug)]
struct Wrapped(BoxError);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream call failed")
    }
}

impl Error for Wrapped {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

fn variant(rejection: &Rejection<'_>) -> &'static str {
    match rejection {
        Rejection::CircuitOpen(_) => "circuit",
        Rejection::RateLimited(_) => "rate",
        Rejection::Overloaded(_) => "overloaded",
        Rejection::ShuttingDown(_) => "shutdown",
        _ => "unknown",
    }
}

#[test]
fn rejections_are_found_in_boxed_errors_and_source_chains() {
    let d = Duration::from_secs(2);
    let cases: [(BoxError, &str); 4] = [
        (CircuitOpen::new(d).into(), "circuit"),
        (RateLimited::new(d).into(), "rate"),
        (Overloaded::new().into(), "overloaded"),
        (ShuttingDown::new().into(), "shutdown"),
    ];
    for (error, name) in cases {
        let direct = Rejection::find(&*error).expect(name);
        assert_eq!(variant(&direct), name);
        let (kind, expected) = (variant(&direct), direct.retry_after());
        let message = direct.as_error().to_string();
        let wrapped = Wrapped(Wrapped(error).into());
        let found = Rejection::find(&wrapped).expect(name);
        assert_eq!(variant(&found), kind, "{name}");
        assert_eq!(found.retry_after(), expected, "{name}");
        assert_eq!(found.as_error().to_string(), message, "{name}");
    }
}

#[test]
fn other_errors_are_not_rejections() {
    let io: BoxError = std::io::Error::other("disk full").into();
    assert!(Rejection::find(&*io).is_none());
    assert!(Rejection::find(&Wrapped(io)).is_none());
}

#[cfg(feature = "http")]
mod http_response {
    use super::*;
    use http::StatusCode;
    use palisade_core::reject::{rejection_response, retry_after_value};

    #[test]
    fn rate_limited_is_429_and_the_rest_503_with_retry_after_rounded_up() {
        let cases: [(BoxError, u16, Option<&str>); 5] = [
            (
                RateLimited::new(Duration::from_millis(1001)).into(),
                429,
                Some("2"),
            ),
            (
                CircuitOpen::new(Duration::from_secs(30)).into(),
                503,
                Some("30"),
            ),
            (Overloaded::new().into(), 503, None),
            (
                Overloaded::new()
                    .with_retry_after(Duration::from_millis(1))
                    .into(),
                503,
                Some("1"),
            ),
            (ShuttingDown::new().into(), 503, None),
        ];
        for (error, status, retry_after) in cases {
            let rejection = Rejection::find(&*error).unwrap();
            let response = rejection.to_response::<String>();
            assert_eq!(response.status(), status, "{error}");
            assert_eq!(rejection.status(), status, "{error}");
            assert_eq!(
                response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap()),
                retry_after,
                "{error}"
            );
            assert!(response.body().is_empty());
        }
    }

    #[test]
    fn retry_after_never_tells_a_client_to_come_back_early() {
        let table = [
            (Duration::ZERO, "0"),
            (Duration::from_nanos(1), "1"),
            (Duration::from_secs(1), "1"),
            (Duration::from_millis(1500), "2"),
            (Duration::MAX, "18446744073709551615"),
        ];
        for (delay, header) in table {
            assert_eq!(retry_after_value(delay), header, "{delay:?}");
        }
        let response = rejection_response::<()>(StatusCode::SERVICE_UNAVAILABLE, None);
        assert!(response.headers().is_empty());
    }
}
