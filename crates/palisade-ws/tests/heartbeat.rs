//! Dead-peer detection against a real in-process server that stops answering while keeping
//! its TCP connection open; all on the paused clock.

mod support;

use std::num::NonZeroUsize;
use std::time::Duration;

use palisade_ws::{DisconnectReason, Message, WsConfig, WsEvent};
use support::{Recorder, TestServer};
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_detected_within_interval_plus_timeout() {
    let server = TestServer::start().await;
    let recorder = Recorder::default();
    let config = WsConfig::builder(server.url())
        .heartbeat(INTERVAL, TIMEOUT)
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    // Some traffic first, so that the silence starts mid-interval.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.send("still there?").await.unwrap();
    server.wait_received(1).await;

    let silent_at = Instant::now();
    server.go_silent();
    server.wait_established(2).await;
    client.connected().await.unwrap();

    let timed = recorder.timed();
    let (detected_at, silent_for) = timed
        .iter()
        .find_map(|(at, e)| match e {
            WsEvent::DeadPeer { silent_for } => Some((*at, *silent_for)),
            _ => None,
        })
        .expect("a dead peer was reported");
    let took = detected_at - silent_at;
    assert!(
        took <= INTERVAL + TIMEOUT,
        "detected {took:?} after the peer went silent"
    );
    assert_eq!(
        silent_for, TIMEOUT,
        "declared dead once the timeout after a ping ran out"
    );
    assert!(timed.iter().any(|(_, e)| matches!(
        e,
        WsEvent::Disconnected {
            reason: DisconnectReason::DeadPeer,
            ..
        }
    )));
    let stats = client.stats();
    assert_eq!((stats.dead_peers, stats.reconnects), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_answering_peer_is_never_declared_dead() {
    let server = TestServer::start().await;
    let config = WsConfig::builder(server.url())
        .heartbeat(INTERVAL, TIMEOUT)
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    // Sixty pings, each answered by the server's pong.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let stats = client.stats();
    assert_eq!((stats.dead_peers, stats.connects), (0, 1));
    assert_eq!(server.accept_times().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_receive_buffer_is_not_taken_for_a_dead_peer() {
    let server = TestServer::start().await;
    let config = WsConfig::builder(server.url())
        .heartbeat(INTERVAL, TIMEOUT)
        .receive_capacity(NonZeroUsize::new(2).unwrap())
        .build()
        .unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    for n in 0..10 {
        server.push(&format!("m{n}"));
    }
    // The application reads nothing for ten minutes: the client stops reading the socket,
    // so it sees no pongs, and must not call the peer dead for it.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(client.stats().dead_peers, 0);
    for n in 0..10 {
        assert_eq!(messages.recv().await, Some(Message::text(format!("m{n}"))));
    }
    assert_eq!(client.stats().connects, 1);
}
