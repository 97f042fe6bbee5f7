//! Keyed breakers: one breaker per key, isolation between keys, one map per layer value,
//! idle and capacity eviction. Time is tokio's paused clock throughout.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_breaker::{
    BreakerEvent, CircuitBreakerConfig, KeyFn, KeyedCircuitBreakerLayer, State, key_fn,
};
use palisade_core::event::listener_fn;
use palisade_core::{Backoff, BoxError, Rejection};
use tokio::time::advance;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A request to the upstream named `key`, which fails if `fail`.
#[derive(Debug)]
struct Call {
    key: &'static str,
    fail: bool,
}

fn by_key(call: &Call) -> &'static str {
    call.key
}

type Breakers = KeyedCircuitBreakerLayer<&'static str, KeyFn<fn(&Call) -> &'static str>>;

/// How long a tripped breaker stays open in [`config`].
const OPEN_WAIT: Duration = Duration::from_secs(30);
/// The idle timeout of [`breakers`].
const IDLE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);

/// Two failures in a row trip; open for [`OPEN_WAIT`].
fn config(open_wait: Duration) -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .name("upstream")
        .consecutive_failures(NonZeroU32::new(2).unwrap())
        .open_wait(Backoff::constant(open_wait))
        .build()
        .unwrap()
}

fn breakers_with(config: CircuitBreakerConfig, max_keys: usize) -> Breakers {
    KeyedCircuitBreakerLayer::new(config, key_fn(by_key as fn(&Call) -> &'static str))
        .max_keys(NonZeroUsize::new(max_keys).unwrap())
        .idle_timeout(IDLE)
}

fn breakers(max_keys: usize) -> Breakers {
    breakers_with(config(OPEN_WAIT), max_keys)
}

/// An upstream behind `breakers` that answers with the call's key.
fn service(
    breakers: &Breakers,
) -> impl Service<Call, Response = &'static str, Error = BoxError> + Clone {
    ServiceBuilder::new()
        .layer(breakers.clone())
        .service_fn(|call: Call| async move {
            if call.fail {
                Err("upstream failed")
            } else {
                Ok(call.key)
            }
        })
}

async fn call<S>(service: &mut S, key: &'static str, fail: bool) -> Result<&'static str, BoxError>
where
    S: Service<Call, Response = &'static str, Error = BoxError>,
{
    service.ready().await?.call(Call { key, fail }).await
}

/// Fails twice with `key`, which trips its breaker.
async fn trip<S>(service: &mut S, key: &'static str)
where
    S: Service<Call, Response = &'static str, Error = BoxError>,
{
    for _ in 0..2 {
        let result = call(service, key, true).await;
        assert!(result.is_err() && !is_circuit_open(&result));
    }
}

fn is_circuit_open<T>(result: &Result<T, BoxError>) -> bool {
    matches!(result, Err(e) if matches!(Rejection::find(&**e), Some(Rejection::CircuitOpen(_))))
}

/// `key`'s breaker state, or `None` if the map holds no breaker for it.
fn state(breakers: &Breakers, key: &'static str) -> Option<State> {
    breakers.handle(&key).map(|handle| handle.state())
}

#[tokio::test(start_paused = true)]
async fn tripping_one_key_leaves_other_keys_closed_and_serving() {
    let breakers = breakers(8);
    let mut service = service(&breakers);

    trip(&mut service, "a").await;
    assert_eq!(state(&breakers, "a"), Some(State::Open));
    assert!(is_circuit_open(&call(&mut service, "a", false).await));

    assert_eq!(call(&mut service, "b", false).await.unwrap(), "b");
    assert_eq!(state(&breakers, "b"), Some(State::Closed));
    // `a`'s failures do not count for `b`: one failure of its own does not trip it.
    assert!(!is_circuit_open(&call(&mut service, "b", true).await));
    assert_eq!(state(&breakers, "b"), Some(State::Closed));
    assert_eq!(call(&mut service, "b", false).await.unwrap(), "b");

    let a = breakers.handle(&"a").unwrap();
    assert_eq!(a.metrics().rejections, 1);
    assert_eq!(breakers.handle(&"b").unwrap().metrics().rejections, 0);
    assert_eq!(breakers.len(), 2);

    // After its wait, `a` probes and closes on its own, as a single breaker does.
    advance(OPEN_WAIT).await;
    for _ in 0..3 {
        assert_eq!(call(&mut service, "a", false).await.unwrap(), "a");
    }
    assert_eq!(a.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_the_map() {
    let layer = breakers(8);
    let clone = layer.clone();
    let mut first = service(&layer);
    let mut second = service(&clone);
    let mut third = first.clone();

    // One failure through each of two services is two in a row for the one breaker of `a`.
    assert!(call(&mut first, "a", true).await.is_err());
    assert!(call(&mut second, "a", true).await.is_err());
    assert!(is_circuit_open(&call(&mut third, "a", false).await));
    assert_eq!(state(&clone, "a"), Some(State::Open));
    assert_eq!((layer.len(), clone.len()), (1, 1));

    assert_eq!(call(&mut third, "b", false).await.unwrap(), "b");
    assert_eq!(layer.len(), 2);

    // Another layer value is another map.
    let other = breakers(8);
    assert!(other.is_empty());
    assert_eq!(call(&mut service(&other), "a", false).await.unwrap(), "a");
    assert_eq!(state(&other, "a"), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_after_idle_timeout_and_come_back_closed() {
    let breakers = breakers(8);
    let mut service = service(&breakers);

    trip(&mut service, "a").await; // open until OPEN_WAIT
    call(&mut service, "b", false).await.unwrap();

    advance(IDLE - SECOND).await;
    call(&mut service, "b", false).await.unwrap();
    assert_eq!(breakers.len(), 2, "nothing is idle yet");

    advance(2 * SECOND).await;
    // `a` has been unused for longer than IDLE, and its wait is over; `b` was used since.
    call(&mut service, "c", false).await.unwrap();
    assert_eq!(state(&breakers, "a"), None);
    assert_eq!(state(&breakers, "b"), Some(State::Closed));
    assert_eq!(breakers.len(), 2);

    // A new breaker for `a`: closed, with an empty window.
    assert_eq!(call(&mut service, "a", false).await.unwrap(), "a");
    let a = breakers.handle(&"a").unwrap();
    assert_eq!(a.state(), State::Closed);
    assert_eq!(a.metrics().rejections, 0);
    assert!(!is_circuit_open(&call(&mut service, "a", true).await));
    assert_eq!(a.state(), State::Closed, "one failure, not two in a row");
}

#[tokio::test(start_paused = true)]
async fn a_key_in_use_is_not_evicted_as_idle() {
    let breakers = breakers(8);
    let mut service = service(&breakers);

    service.ready().await.unwrap();
    let in_flight = service.call(Call {
        key: "a",
        fail: false,
    });
    advance(2 * IDLE).await;
    assert_eq!(breakers.evict_idle(), 0, "a call is in flight");
    assert_eq!(in_flight.await.unwrap(), "a");

    let handle = breakers.handle(&"a").unwrap();
    assert_eq!(breakers.evict_idle(), 0, "a handle is alive");
    drop(handle);
    assert_eq!(breakers.evict_idle(), 1);
    assert!(breakers.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_open_key_is_not_evicted_as_idle_before_its_wait_ends() {
    let open_wait = 5 * IDLE;
    let breakers = breakers_with(config(open_wait), 8);
    let mut service = service(&breakers);

    trip(&mut service, "a").await;
    advance(2 * IDLE).await;
    assert_eq!(breakers.evict_idle(), 0);
    assert!(is_circuit_open(&call(&mut service, "a", false).await));

    advance(open_wait).await;
    assert_eq!(breakers.evict_idle(), 1);
    assert_eq!(state(&breakers, "a"), None);
}

#[tokio::test(start_paused = true)]
async fn at_max_keys_a_new_key_evicts_the_least_recently_used_closed_key() {
    let breakers = breakers(3);
    let mut service = service(&breakers);

    for key in ["a", "b", "c"] {
        call(&mut service, key, false).await.unwrap();
        advance(SECOND).await;
    }
    call(&mut service, "d", false).await.unwrap();
    assert_eq!(state(&breakers, "a"), None);
    assert_eq!(breakers.len(), 3);
    advance(SECOND).await;

    // Using `b` again makes `c` the least recently used.
    call(&mut service, "b", false).await.unwrap();
    advance(SECOND).await;
    call(&mut service, "e", false).await.unwrap();
    assert_eq!(state(&breakers, "c"), None);
    for key in ["b", "d", "e"] {
        assert_eq!(state(&breakers, key), Some(State::Closed), "{key}");
    }
    assert_eq!(breakers.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn at_max_keys_idle_keys_are_evicted_before_recently_used_ones() {
    let breakers = breakers(3);
    let mut service = service(&breakers);

    trip(&mut service, "a").await; // open until OPEN_WAIT
    advance(IDLE - 10 * SECOND).await;
    call(&mut service, "b", false).await.unwrap();
    call(&mut service, "c", false).await.unwrap();
    // Sweeps now, so the next periodic sweep is due only in IDLE.
    assert_eq!(breakers.evict_idle(), 0);

    advance(15 * SECOND).await;
    // `a` is open, which the least-recently-used rule would keep over the closed `b`; but it
    // is idle (its wait is over), so it goes first.
    call(&mut service, "d", false).await.unwrap();
    assert_eq!(state(&breakers, "a"), None);
    for key in ["b", "c", "d"] {
        assert_eq!(state(&breakers, key), Some(State::Closed), "{key}");
    }
    assert_eq!(breakers.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_open_key_is_kept_over_a_closed_one_when_evicting() {
    let breakers = breakers(2);
    let mut service = service(&breakers);

    trip(&mut service, "a").await;
    advance(SECOND).await;
    call(&mut service, "b", false).await.unwrap();
    advance(SECOND).await;
    call(&mut service, "c", false).await.unwrap();

    assert_eq!(state(&breakers, "a"), Some(State::Open));
    assert_eq!(state(&breakers, "b"), None);
    assert_eq!(state(&breakers, "c"), Some(State::Closed));
    assert!(is_circuit_open(&call(&mut service, "a", false).await));
}

#[tokio::test(start_paused = true)]
async fn when_every_key_is_open_the_least_recently_used_is_evicted() {
    let breakers = breakers(2);
    let mut service = service(&breakers);

    trip(&mut service, "a").await;
    advance(SECOND).await;
    trip(&mut service, "b").await;
    advance(SECOND).await;
    call(&mut service, "c", false).await.unwrap();

    assert_eq!(state(&breakers, "a"), None);
    assert_eq!(state(&breakers, "b"), Some(State::Open));
    assert_eq!(state(&breakers, "c"), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_key_with_calls_in_flight_is_evicted_last() {
    let breakers = breakers(2);
    let mut service = service(&breakers);

    service.ready().await.unwrap();
    let in_flight = service.call(Call {
        key: "a",
        fail: false,
    });
    advance(SECOND).await;
    call(&mut service, "b", false).await.unwrap();
    advance(SECOND).await;
    // `a` is the least recently used, but `b` is the one not in use.
    call(&mut service, "c", false).await.unwrap();
    assert_eq!(state(&breakers, "a"), Some(State::Closed));
    assert_eq!(state(&breakers, "b"), None);
    assert_eq!(in_flight.await.unwrap(), "a");
}

#[tokio::test(start_paused = true)]
async fn an_evicted_breaker_still_finishes_its_calls_in_flight() {
    let breakers = breakers(1);
    let mut service = service(&breakers);

    // `a`'s call will fail: the first of two failures in a row.
    service.ready().await.unwrap();
    let in_flight = service.call(Call {
        key: "a",
        fail: true,
    });
    // The map is full and every breaker is in use: one is evicted anyway.
    call(&mut service, "b", false).await.unwrap();
    assert_eq!(state(&breakers, "a"), None);
    assert_eq!(breakers.len(), 1);
    assert!(!is_circuit_open(&in_flight.await));

    // `a`'s new breaker did not see the evicted one's failure.
    assert!(!is_circuit_open(&call(&mut service, "a", true).await));
    assert_eq!(state(&breakers, "a"), Some(State::Closed));
    assert_eq!(breakers.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_map_never_holds_more_than_max_keys() {
    let max_keys = 4;
    let breakers = KeyedCircuitBreakerLayer::new(config(OPEN_WAIT), key_fn(|n: &u32| n % 13))
        .max_keys(NonZeroUsize::new(max_keys).unwrap())
        .idle_timeout(IDLE);
    let mut service =
        ServiceBuilder::new()
            .layer(breakers.clone())
            .service_fn(|n: u32| async move {
                if n.is_multiple_of(3) {
                    Err("failed")
                } else {
                    Ok(n)
                }
            });

    let mut most = 0;
    for n in 0..200 {
        let _ = service.ready().await.unwrap().call(n).await;
        most = most.max(breakers.len());
        assert!(breakers.len() <= max_keys, "{} keys", breakers.len());
        advance(Duration::from_secs(7)).await;
    }
    assert_eq!(most, max_keys);
}

#[tokio::test(start_paused = true)]
async fn each_key_reports_events_under_its_own_name() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let config = CircuitBreakerConfig::builder()
        .name("upstream")
        .consecutive_failures(NonZeroU32::new(2).unwrap())
        .listener(listener_fn(move |event: &BreakerEvent| {
            sink.lock().unwrap().push(event.clone());
        }))
        .build()
        .unwrap();
    let breakers = breakers_with(config, 8);
    let mut service = service(&breakers);

    call(&mut service, "b", false).await.unwrap();
    trip(&mut service, "a").await;
    assert_eq!(breakers.handle(&"a").unwrap().name(), r#"upstream/"a""#);

    let events = events.lock().unwrap();
    assert!(
        matches!(
            events.as_slice(),
            [BreakerEvent::StateChanged { name, from: State::Closed, to: State::Open, .. }]
                if &**name == r#"upstream/"a""#
        ),
        "{events:?}"
    );
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn host_key_gives_each_upstream_host_its_own_breaker() {
    use http::uri::Authority;
    use http::{Request, Response};
    use palisade_breaker::HostKey;

    let breakers = KeyedCircuitBreakerLayer::new(config(OPEN_WAIT), HostKey);
    let mut service = ServiceBuilder::new().layer(breakers.clone()).service_fn(
        |request: Request<()>| async move {
            if request.uri().path() == "/fail" {
                Err("upstream failed")
            } else {
                Ok(Response::new(()))
            }
        },
    );
    let mut send = async |request: Request<()>| service.ready().await?.call(request).await;

    for _ in 0..2 {
        let failing = Request::get("http://a.example/fail").body(()).unwrap();
        assert!(!is_circuit_open(&send(failing).await));
    }
    let by_header = Request::get("/")
        .header("host", "A.Example")
        .body(())
        .unwrap();
    assert!(is_circuit_open(&send(by_header).await));
    let other = Request::get("http://b.example/").body(()).unwrap();
    assert!(send(other).await.is_ok());

    let a = breakers
        .handle(&Some(Authority::from_static("a.example")))
        .unwrap();
    assert_eq!(a.state(), State::Open);
    assert_eq!(a.name(), "upstream/Some(a.example)");
    assert_eq!(breakers.len(), 2);
}
