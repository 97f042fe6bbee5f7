//! Reconnecting against a real in-process server: backoff delays on the paused clock,
//! attempt limits, the minimum time connected, the endpoint provider, close codes, and
//! `close()` never reconnecting.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade_core::backoff::{Backoff, Jitter};
use palisade_ws::{
    ConnectFailure, DisconnectReason, IntoClientRequest, Message, SendError, Status, WsConfig,
    WsEvent, endpoint_fn,
};
use support::{Recorder, TestServer, wait_status};
use tokio::time::Instant;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[tokio::test]
async fn sends_and_receives_through_a_real_server() {
    let server = TestServer::start().await;
    let config = WsConfig::builder(server.url()).build().unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    client.send("hello").await.unwrap();
    client.send(vec![1u8, 2, 3]).await.unwrap();
    assert_eq!(messages.recv().await, Some(Message::text("hello")));
    assert_eq!(
        messages.recv().await,
        Some(Message::binary(vec![1u8, 2, 3]))
    );
    let stats = client.stats();
    assert_eq!((stats.connects, stats.sent, stats.received), (1, 2, 2));
    client.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn reconnect_delays_follow_the_backoff() {
    let server = TestServer::start().await;
    server.refuse_next(4);
    let backoff = Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(30))
        .unwrap()
        .with_jitter(Jitter::Full)
        .with_seed(7);
    let expected: Vec<Duration> = backoff.delays().take(4).collect();
    let recorder = Recorder::default();
    let config = WsConfig::builder(server.url())
        .backoff(backoff)
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();

    let accepts = server.accept_times();
    assert_eq!(accepts.len(), 5, "four refusals, then a connection");
    let gaps: Vec<Duration> = accepts.windows(2).map(|w| w[1] - w[0]).collect();
    // Tokio's timers fire on whole milliseconds: each gap is its delay, rounded up.
    let rounded: Vec<Duration> = expected
        .iter()
        .map(|d| Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64))
        .collect();
    assert_eq!(
        gaps, rounded,
        "time between attempts is the backoff's delay"
    );
    let announced: Vec<(u32, Duration)> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            WsEvent::Reconnecting { attempt, delay } => Some((attempt, delay)),
            _ => None,
        })
        .collect();
    assert_eq!(
        announced,
        expected
            .iter()
            .enumerate()
            .map(|(i, d)| (i as u32 + 2, *d))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        recorder.count(|e| matches!(
            e,
            WsEvent::ConnectFailed {
                failure: ConnectFailure::Rejected { status: 503 },
                ..
            }
        )),
        4
    );
    assert_eq!(client.stats().connect_failures, 4);
}

#[tokio::test(start_paused = true)]
async fn fails_after_max_attempts_and_fails_what_was_queued() {
    let server = TestServer::start().await;
    server.refuse_next(u32::MAX);
    let recorder = Recorder::default();
    let config = WsConfig::builder(server.url())
        .max_attempts(nz(3))
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    let queued = client.send("never written");

    let status = wait_status(&client, Status::is_final).await;
    assert_eq!(status, Status::Failed { attempts: 3 });
    assert_eq!(server.accept_times().len(), 3);
    assert_eq!(queued.await, Err(SendError::Failed));
    assert_eq!(client.send("late").await, Err(SendError::Failed));
    assert_eq!(messages.recv().await, None, "the stream ends");
    assert_eq!(
        client.connected().await,
        Err(Status::Failed { attempts: 3 })
    );
    assert!(recorder.events().contains(&WsEvent::Failed { attempts: 3 }));
    assert_eq!(client.stats().dropped, 2);
}

#[tokio::test(start_paused = true)]
async fn attempt_count_resets_only_after_the_minimum_time_connected() {
    let server = TestServer::start().await;
    let backoff = Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(30))
        .unwrap()
        .with_jitter(Jitter::None);
    let config = WsConfig::builder(server.url())
        .backoff(backoff)
        .min_connected(Duration::from_secs(5))
        .no_heartbeat()
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();

    // Two connections dropped at once: the run of attempts goes on (1 s, then 2 s).
    for n in 1..=2 {
        server.wait_established(n).await;
        server.drop_connections();
    }
    // The third stays up past the minimum: the next loss starts over at 1 s.
    server.wait_established(3).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    server.drop_connections();
    server.wait_established(4).await;
    client.connected().await.unwrap();

    let accepts = server.accept_times();
    let gaps: Vec<Duration> = accepts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [1, 2, 7].map(Duration::from_secs),
        "1 s, 2 s (no reset), then 6 s connected + 1 s (reset)"
    );
    assert_eq!(client.stats().reconnects, 3);
}

#[tokio::test(start_paused = true)]
async fn endpoint_is_asked_for_a_fresh_request_on_every_attempt() {
    let server = TestServer::start().await;
    server.refuse_next(2);
    let url = server.url();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let endpoint = endpoint_fn(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let url = url.clone();
        async move {
            let mut request = url.into_client_request()?;
            request
                .headers_mut()
                .insert("x-token", format!("token-{n}").parse()?);
            Ok(request)
        }
    });
    let config = WsConfig::builder(endpoint).build().unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    assert_eq!(server.tokens(), ["token-1", "token-2", "token-3"]);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn close_never_reconnects() {
    let server = TestServer::start().await;
    let recorder = Recorder::default();
    let config = WsConfig::builder(server.url())
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    client.close().await.unwrap();
    assert_eq!(client.status(), Status::Disconnected);

    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(server.accept_times().len(), 1, "no attempt after close");
    assert_eq!(
        recorder.count(|e| matches!(e, WsEvent::Reconnecting { .. })),
        0
    );
    assert!(recorder.events().contains(&WsEvent::Closed { clean: true }));
    assert_eq!(client.send("after").await, Err(SendError::Closed));
    assert_eq!(messages.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn close_while_reconnecting_stops_the_attempts() {
    let addr = support::vacant_addr().await;
    let config = WsConfig::builder(format!("ws://{addr}")).build().unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    wait_status(&client, |s| {
        matches!(s, Status::Reconnecting { attempt: 3, .. })
    })
    .await;
    client.close().await.unwrap();
    assert_eq!(client.status(), Status::Disconnected);
    assert_eq!(client.stats().connect_failures, 2);
}

#[tokio::test(start_paused = true)]
async fn dropped_connection_reconnects() {
    let server = TestServer::start().await;
    let recorder = Recorder::default();
    let config = WsConfig::builder(server.url())
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    server.wait_established(1).await;
    server.drop_connections();
    server.wait_established(2).await;
    client.connected().await.unwrap();
    assert!(recorder.events().iter().any(|e| matches!(
        e,
        WsEvent::Disconnected {
            reason: DisconnectReason::Abnormal,
            ..
        }
    )));
    assert_eq!(client.stats().reconnects, 1);
}

#[tokio::test(start_paused = true)]
async fn going_away_close_reconnects_but_a_normal_close_ends_the_client() {
    let server = TestServer::start().await;
    let config = WsConfig::builder(server.url()).build().unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    server.wait_established(1).await;

    server.close_connections(1001);
    server.wait_established(2).await;
    client.connected().await.unwrap();

    server.close_connections(1000);
    assert_eq!(
        wait_status(&client, Status::is_final).await,
        Status::Disconnected
    );
    assert_eq!(messages.recv().await, None);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(server.accept_times().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_normal_close_can_be_reconnected_when_asked() {
    let server = TestServer::start().await;
    let config = WsConfig::builder(server.url())
        .reconnect_on_normal_close(true)
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    server.wait_established(1).await;
    server.close_connections(1000);
    server.wait_established(2).await;
    client.connected().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_bounds_an_attempt_on_a_server_that_never_answers() {
    // A TCP listener that accepts and never answers the handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            held.push(socket);
        }
    });
    let recorder = Recorder::default();
    let config = WsConfig::builder(format!("ws://{addr}"))
        .connect_timeout(Duration::from_secs(3))
        .max_attempts(nz(1))
        .listener(recorder.listener())
        .build()
        .unwrap();
    let started = Instant::now();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    assert_eq!(
        wait_status(&client, Status::is_final).await,
        Status::Failed { attempts: 1 }
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(recorder.events().contains(&WsEvent::ConnectFailed {
        attempt: 1,
        failure: ConnectFailure::TimedOut
    }));
    hold.abort();
}
