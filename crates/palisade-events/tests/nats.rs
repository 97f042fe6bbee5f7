//! Two buses, two connections, one private `nats-server` per test (`palisade-testkit`).
//!
//! Every wait is for an event (a handler, a dead letter, a listener's report); the timeout
//! around each only turns a hang into a failure.

#![cfg(feature = "nats")]

use std::future::Future;
use std::time::Duration;

use palisade_core::backoff::Backoff;
use palisade_core::event::Listener;
use palisade_events::nats::{Malformed, NatsBridge, NatsConfig, NatsError};
use palisade_events::{BusEvent, DeadLetter, Event, EventBus, HandlerOutcome};
use palisade_testkit::NatsServer;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
}

impl Event for OrderPlaced {
    const NAME: &'static str = "order.placed";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PaymentSucceeded {
    order_id: u64,
    amount_cents: u64,
}

impl Event for PaymentSucceeded {
    const NAME: &'static str = "payment.succeeded";
}

/// Only for this test binary: proves the in-process bus still takes non-serde events.
#[derive(Debug, Clone)]
struct LocalOnly;

impl Event for LocalOnly {
    const NAME: &'static str = "local.only";
}

/// A safety net: long enough never to fire on a working machine.
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A private server this test may break; `None` (skip) without `nats-server` or with
/// `NATS_URL`.
fn private_nats() -> Option<NatsServer> {
    let nats = NatsServer::start_or_skip()?;
    if nats.pid().is_none() {
        eprintln!("skipping: NATS_URL points at an external server, which cannot be faulted");
        return None;
    }
    Some(nats)
}

/// Quick, steady reconnects: the tests wait for reconnection events, not for time.
fn config(server: &NatsServer) -> NatsConfig {
    NatsConfig::new(server.url())
        .expect("the testkit's URL")
        .reconnect(Backoff::constant(Duration::from_millis(20)))
}

/// Sends a bus's reports to a channel.
struct Reports(mpsc::UnboundedSender<BusEvent>);

impl Listener<BusEvent> for Reports {
    fn on_event(&self, event: &BusEvent) {
        let _ = self.0.send(event.clone());
    }
}

/// A bus whose reports arrive on the returned channel.
fn observed_bus() -> (EventBus, mpsc::UnboundedReceiver<BusEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (EventBus::builder().listener(Reports(tx)).build(), rx)
}

/// Waits for the first report that `pick` takes.
async fn report<T>(
    reports: &mut mpsc::UnboundedReceiver<BusEvent>,
    what: &str,
    mut pick: impl FnMut(BusEvent) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            let event = reports.recv().await.expect("the bus is alive");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
}

/// A handler of `E` on `bus` that forwards every event to the returned channel.
fn collect<E: Event>(bus: &EventBus) -> mpsc::UnboundedReceiver<E> {
    let (tx, rx) = mpsc::unbounded_channel();
    bus.on(move |event: E| {
        let _ = tx.send(event);
        async {}
    })
    .detach();
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_buses_exchange_typed_events() {
    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    let (checkout, shipping) = (EventBus::new(), EventBus::new());
    let mut placed = collect::<OrderPlaced>(&shipping);
    let mut paid = collect::<PaymentSucceeded>(&shipping);
    let mut echoed = collect::<OrderPlaced>(&checkout);
    checkout.on(|_: LocalOnly| async {}).detach();

    let to_shipping = NatsBridge::connect(&shipping, config(&server))
        .await
        .expect("connect");
    let _orders = to_shipping.bridge::<OrderPlaced>().await.expect("bridge");
    let _payments = to_shipping
        .bridge::<PaymentSucceeded>()
        .await
        .expect("bridge");
    let from_checkout = NatsBridge::connect(&checkout, config(&server))
        .await
        .expect("connect");
    let own_orders = from_checkout.bridge::<OrderPlaced>().await.expect("bridge");
    assert_eq!(own_orders.subject(), "palisade.events.order.placed");

    from_checkout
        .publish(&OrderPlaced { order_id: 42 })
        .await
        .expect("publish");
    let payment = PaymentSucceeded {
        order_id: 42,
        amount_cents: 5_000,
    };
    from_checkout.publish(&payment).await.expect("publish");

    assert_eq!(
        within("the order", placed.recv()).await,
        Some(OrderPlaced { order_id: 42 })
    );
    assert_eq!(within("the payment", paid.recv()).await, Some(payment));
    // The publisher bridges `OrderPlaced` too, so it gets its own event back, like every
    // other subscriber.
    assert_eq!(
        within("the echo", echoed.recv()).await,
        Some(OrderPlaced { order_id: 42 })
    );
    // The in-process bus still carries events that are not serde types.
    assert!(checkout.emit(LocalOnly).await.is_ok());

    from_checkout.flush().await.expect("flush");
    assert_eq!(from_checkout.stats().sent, 2);
    shipping.flush().await;
    assert_eq!(to_shipping.stats().received, 2);
    assert!(to_shipping.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failure_on_the_receiving_side_is_its_dead_letter() {
    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    let (letters_tx, mut letters) = mpsc::unbounded_channel::<DeadLetter>();
    let receiver = EventBus::builder()
        .on_dead_letter(move |letter| {
            let _ = letters_tx.send(letter);
        })
        .build();
    receiver
        .subscribe()
        .name("confirmation-mail")
        .on(|_: OrderPlaced| async { Err::<(), _>("smtp unavailable") })
        .detach();
    let (sender_bus, mut sender_reports) = observed_bus();

    let inbound = NatsBridge::connect(&receiver, config(&server))
        .await
        .expect("connect");
    let _orders = inbound.bridge::<OrderPlaced>().await.expect("bridge");
    let outbound = NatsBridge::connect(&sender_bus, config(&server))
        .await
        .expect("connect");
    outbound
        .publish(&OrderPlaced { order_id: 7 })
        .await
        .expect("publishing does not wait for remote handlers");

    let letter = within("the dead letter", letters.recv())
        .await
        .expect("a dead letter");
    assert_eq!(
        letter.event().downcast_ref::<OrderPlaced>(),
        Some(&OrderPlaced { order_id: 7 })
    );
    let failure = letter.report().failures().next().expect("one failure");
    assert_eq!(failure.name(), "confirmation-mail");
    assert!(
        matches!(failure.outcome(), HandlerOutcome::Failed(error) if error.to_string() == "smtp unavailable")
    );
    // The sending side saw no handler at all: its bus reported nothing about the failure.
    outbound.flush().await.expect("flush");
    while let Ok(event) = sender_reports.try_recv() {
        assert!(
            !matches!(event, BusEvent::DeadLetter { .. }),
            "the sender got {event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_resubscribes_after_a_server_restart_and_reports_the_gap() {
    let Some(mut server) = private_nats() else {
        return;
    };
    let (receiver, mut receiver_reports) = observed_bus();
    let mut placed = collect::<OrderPlaced>(&receiver);
    let (sender_bus, mut sender_reports) = observed_bus();

    let inbound = NatsBridge::connect(&receiver, config(&server))
        .await
        .expect("connect");
    let _orders = inbound.bridge::<OrderPlaced>().await.expect("bridge");
    let outbound = NatsBridge::connect(&sender_bus, config(&server))
        .await
        .expect("connect");
    outbound
        .publish(&OrderPlaced { order_id: 1 })
        .await
        .expect("publish");
    assert_eq!(
        within("the first order", placed.recv()).await,
        Some(OrderPlaced { order_id: 1 })
    );

    server.kill().expect("kill");
    report(
        &mut receiver_reports,
        "the receiver's disconnect",
        |event| matches!(event, BusEvent::RemoteDisconnected { .. }).then_some(()),
    )
    .await;
    assert!(!inbound.is_connected());
    server.restart().expect("restart");

    let (gap, events) = report(
        &mut receiver_reports,
        "the receiver's gap",
        |event| match event {
            BusEvent::RemoteGap { gap, events } => Some((gap, events)),
            _ => None,
        },
    )
    .await;
    assert_eq!(&*events, ["order.placed"]);
    assert!(gap > Duration::ZERO);
    // The sender has no subscription: it reconnects, and has no gap to report.
    report(&mut sender_reports, "the sender's reconnect", |event| {
        assert!(!matches!(event, BusEvent::RemoteGap { .. }), "{event:?}");
        matches!(event, BusEvent::RemoteReconnected { .. }).then_some(())
    })
    .await;

    outbound
        .publish(&OrderPlaced { order_id: 2 })
        .await
        .expect("publish after the restart");
    assert_eq!(
        within("the order after the restart", placed.recv()).await,
        Some(OrderPlaced { order_id: 2 })
    );
    let stats = inbound.stats();
    assert_eq!((stats.reconnects, stats.gaps, stats.received), (1, 1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_reconnecting_are_sent_once_back() {
    let Some(mut server) = private_nats() else {
        return;
    };
    let (bus, mut reports) = observed_bus();
    let mut placed = collect::<OrderPlaced>(&bus);
    let nats = NatsBridge::connect(&bus, config(&server))
        .await
        .expect("connect");
    // One connection both ways: after the restart it subscribes before it sends.
    let _orders = nats.bridge::<OrderPlaced>().await.expect("bridge");

    server.kill().expect("kill");
    report(&mut reports, "the disconnect", |event| {
        matches!(event, BusEvent::RemoteDisconnected { .. }).then_some(())
    })
    .await;
    nats.publish(&OrderPlaced { order_id: 5 })
        .await
        .expect("queued while disconnected");
    server.restart().expect("restart");

    assert_eq!(
        within("the queued order", placed.recv()).await,
        Some(OrderPlaced { order_id: 5 })
    );
    assert_eq!(nats.stats().unsent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_bridge_brings_no_more_events() {
    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    let receiver = EventBus::new();
    let mut placed = collect::<OrderPlaced>(&receiver);
    let mut paid = collect::<PaymentSucceeded>(&receiver);
    let inbound = NatsBridge::connect(&receiver, config(&server))
        .await
        .expect("connect");
    let orders = inbound.bridge::<OrderPlaced>().await.expect("bridge");
    let _payments = inbound.bridge::<PaymentSucceeded>().await.expect("bridge");
    let outbound = NatsBridge::connect(&EventBus::new(), config(&server))
        .await
        .expect("connect");

    drop(orders);
    // The UNSUB goes out before the flush's PING: the server has it when this returns.
    inbound.flush().await.expect("flush");
    outbound
        .publish(&OrderPlaced { order_id: 8 })
        .await
        .expect("publish");
    let payment = PaymentSucceeded {
        order_id: 8,
        amount_cents: 1,
    };
    outbound.publish(&payment).await.expect("publish");

    // Both travel in order on one connection each way, and are dispatched in order: had
    // the order come, its handler would have run before the payment's.
    assert_eq!(within("the payment", paid.recv()).await, Some(payment));
    assert!(placed.try_recv().is_err(), "an unsubscribed event arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_found_by_pings_and_the_gap_reported() {
    let Some(mut server) = private_nats() else {
        return;
    };
    let (receiver, mut reports) = observed_bus();
    let inbound = NatsBridge::connect(
        &receiver,
        config(&server).ping_interval(Duration::from_millis(50)),
    )
    .await
    .expect("connect");
    let _orders = inbound.bridge::<OrderPlaced>().await.expect("bridge");

    server.pause().expect("pause");
    let reason = report(&mut reports, "the disconnect", |event| match event {
        BusEvent::RemoteDisconnected { reason, .. } => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.contains("no answer"), "{reason}");
    server.resume().expect("resume");
    report(&mut reports, "the gap", |event| {
        matches!(event, BusEvent::RemoteGap { .. }).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payload_is_reported_counted_and_not_delivered() {
    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    let (receiver, mut reports) = observed_bus();
    let mut placed = collect::<OrderPlaced>(&receiver);
    let (bad_tx, mut bad) = mpsc::unbounded_channel::<Malformed>();
    let inbound = NatsBridge::connect(
        &receiver,
        config(&server).on_malformed(move |malformed| {
            let _ = bad_tx.send(malformed);
        }),
    )
    .await
    .expect("connect");
    let orders = inbound.bridge::<OrderPlaced>().await.expect("bridge");

    // Another program writes garbage, then a good event, on the subject.
    let good = serde_json::to_vec(&OrderPlaced { order_id: 3 }).unwrap();
    raw_publish(&server, orders.subject(), &[b"not json", &good]).await;

    let malformed = within("on_malformed", bad.recv())
        .await
        .expect("a malformed message");
    assert_eq!(malformed.event(), "order.placed");
    assert_eq!(malformed.subject(), "palisade.events.order.placed");
    assert_eq!(malformed.payload(), b"not json");
    report(&mut reports, "the listener's report", |event| match event {
        BusEvent::RemoteMalformed { event, error } => Some((event, error)),
        _ => None,
    })
    .await;
    // The good event behind it still arrives.
    assert_eq!(
        within("the good order", placed.recv()).await,
        Some(OrderPlaced { order_id: 3 })
    );
    let stats = inbound.stats();
    assert_eq!((stats.malformed, stats.received), (1, 1));
}

/// Publishes `payloads` on `subject` with a bare TCP client, and waits until the server
/// has them.
async fn raw_publish(server: &NatsServer, subject: &str, payloads: &[&[u8]]) {
    let address = server.url().trim_start_matches("nats://");
    let stream = TcpStream::connect(address).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let info = lines.next_line().await.expect("read").expect("INFO");
    assert!(info.starts_with("INFO "), "{info}");
    let mut out = b"CONNECT {\"verbose\":false}\r\n".to_vec();
    for payload in payloads {
        out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"PING\r\n");
    write.write_all(&out).await.expect("write");
    let answer = within("PONG", lines.next_line()).await.expect("read");
    assert_eq!(answer.as_deref(), Some("PONG"));
}

#[tokio::test]
async fn connecting_to_no_server_fails_with_the_cause() {
    let Some(mut server) = private_nats() else {
        return;
    };
    let config = config(&server).connect_timeout(PATIENCE);
    server.kill().expect("kill");
    let error = NatsBridge::connect(&EventBus::new(), config)
        .await
        .expect_err("nothing listens");
    assert!(matches!(error, NatsError::Connect { .. }), "{error}");
}

#[tokio::test]
async fn event_names_that_are_not_subjects_are_refused() {
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Spaced;
    impl Event for Spaced {
        const NAME: &'static str = "order placed";
    }

    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    let nats = NatsBridge::connect(&EventBus::new(), config(&server))
        .await
        .expect("connect");
    assert!(matches!(
        nats.bridge::<Spaced>().await,
        Err(NatsError::InvalidSubject { .. })
    ));
    assert!(matches!(
        nats.publish(&Spaced).await,
        Err(NatsError::InvalidSubject { .. })
    ));
}
