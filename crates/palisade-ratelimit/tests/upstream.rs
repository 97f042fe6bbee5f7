//! The client side (feature `http`): an upstream's `429` + `Retry-After` or spent `RateLimit`
//! pauses every call until then; nothing waits on real time (paused tokio clock).

#![cfg(feature = "http")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use palisade_core::Rejection;
use palisade_ratelimit::{UpstreamLimitLayer, upstream_pause};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// An upstream answering from a script (then `200`s), recording when each call arrived.
#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Response<()>>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Upstream {
    fn answering(responses: impl IntoIterator<Item = Response<()>>) -> Self {
        let upstream = Self::default();
        upstream.script.lock().unwrap().extend(responses);
        upstream
    }

    fn calls(&self, start: Instant) -> Vec<Duration> {
        let calls = self.calls.lock().unwrap();
        calls.iter().map(|at| *at - start).collect()
    }
}

impl Service<Request<()>> for Upstream {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        self.calls.lock().unwrap().push(Instant::now());
        let next = self.script.lock().unwrap().pop_front();
        std::future::ready(Ok(next.unwrap_or_else(|| Response::new(()))))
    }
}

fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_pauses_every_call_until_then() {
    let upstream = Upstream::answering([response(429, &[("retry-after", "3")])]);
    let layer = UpstreamLimitLayer::new();
    let client = layer.layer(upstream.clone());
    let start = Instant::now();

    let first = client.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        first.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "passed on as it is"
    );
    assert_eq!(layer.pause_left(), Duration::from_secs(3));

    // Three calls made during the pause all wait for its end, then go.
    let calls = (0..3).map(|_| tokio::spawn(client.clone().oneshot(Request::new(()))));
    for call in calls.collect::<Vec<_>>() {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    let secs = Duration::from_secs(3);
    assert_eq!(
        upstream.calls(start),
        [Duration::ZERO, secs, secs, secs],
        "nothing reached the upstream during the pause"
    );
    assert_eq!(layer.pause_left(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_spent_ratelimit_header_pauses_for_its_reset() {
    let upstream = Upstream::answering([response(
        200,
        &[("ratelimit", r#""burst";r=5;t=1, "daily";r=0;t=7"#)],
    )]);
    let client = UpstreamLimitLayer::new().layer(upstream.clone());
    let start = Instant::now();
    client.clone().oneshot(Request::new(())).await.unwrap();
    client.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        upstream.calls(start),
        [Duration::ZERO, Duration::from_secs(7)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_pause_longer_than_max_wait_fails_fast_with_its_retry_after() {
    let upstream = Upstream::answering([response(503, &[("retry-after", "120")])]);
    let client = UpstreamLimitLayer::new()
        .max_wait(Duration::from_secs(10))
        .layer(upstream.clone());
    client.clone().oneshot(Request::new(())).await.unwrap();
    let error = client.clone().oneshot(Request::new(())).await.unwrap_err();
    let Some(Rejection::RateLimited(limited)) = Rejection::find(&*error) else {
        panic!("expected RateLimited, got {error}");
    };
    assert_eq!(
        palisade_core::RetryAfter::retry_after(limited),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        upstream.calls(Instant::now()).len(),
        1,
        "the upstream was spared"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_that_meets_another_429_starts_a_new_pause() {
    let upstream = Upstream::answering([
        response(429, &[("retry-after", "2")]),
        response(429, &[("retry-after", "5")]),
    ]);
    let client = UpstreamLimitLayer::new().layer(upstream.clone());
    let start = Instant::now();
    client.clone().oneshot(Request::new(())).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    // Waits until 2 s, goes, and is told to hold off 5 s more.
    let second = client.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let third = client.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(
        upstream.calls(start),
        [
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::from_secs(7)
        ]
    );
}

#[test]
fn what_responses_ask_for() {
    let bare = Duration::from_secs(1);
    let pause = |r: Response<()>| upstream_pause(&r, bare);
    assert_eq!(pause(response(200, &[])), None);
    assert_eq!(pause(response(429, &[])), Some(bare));
    assert_eq!(pause(response(429, &[("retry-after", "soon")])), Some(bare));
    assert_eq!(pause(response(503, &[])), None);
    assert_eq!(
        pause(response(
            503,
            &[("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT")]
        )),
        Some(Duration::ZERO),
        "an HTTP-date in the past: no wait"
    );
    let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(3_600);
    let date = httpdate_of(in_an_hour);
    let asked = pause(response(429, &[("retry-after", &date)])).expect("a date is read");
    assert!(
        asked > Duration::from_secs(3_500) && asked <= Duration::from_secs(3_600),
        "{asked:?}"
    );
    assert_eq!(
        pause(response(503, &[("retry-after", "4")])),
        Some(Duration::from_secs(4))
    );
    assert_eq!(
        pause(response(
            200,
            &[("ratelimit-remaining", "0"), ("ratelimit-reset", "9")]
        )),
        Some(Duration::from_secs(9))
    );
    assert_eq!(
        pause(response(
            200,
            &[("ratelimit-remaining", "3"), ("ratelimit-reset", "9")]
        )),
        None
    );
    assert_eq!(
        pause(response(
            429,
            &[("retry-after", "2"), ("ratelimit", r#""a";r=0;t=6"#)]
        )),
        Some(Duration::from_secs(2)),
        "Retry-After says when the next request may go; the reset is the whole quota's"
    );
    assert_eq!(
        pause(response(429, &[("ratelimit", r#""a";r=0;t=6"#)])),
        Some(Duration::from_secs(6)),
        "without Retry-After, the spent policy's reset"
    );
    assert_eq!(
        pause(response(
            200,
            &[("ratelimit", r#""a";r=0;t=6, "b";r=0;t=9"#)]
        )),
        Some(Duration::from_secs(9)),
        "the longest of the spent policies"
    );
}

/// `at` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_of(at: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[usize::try_from(days % 7).expect("small")],
        MONTHS[usize::try_from(month - 1).expect("small")],
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}
