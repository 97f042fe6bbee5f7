//! The send buffer against a real in-process server: flushed in order and exactly once after a
//! restart on the same port, the overflow policies, and every drop reported.

mod support;

use std::num::NonZeroUsize;
use std::time::Duration;

use futures_util::FutureExt;
use palisade_ws::{
    BufferLimits, Message, OverflowPolicy, SendError, SendFuture, Status, WsConfig, WsEvent,
};
use support::{Recorder, TestServer, vacant_addr, wait_status};

fn limits(messages: usize, bytes: usize, policy: OverflowPolicy) -> BufferLimits {
    BufferLimits {
        messages: NonZeroUsize::new(messages).unwrap(),
        bytes: NonZeroUsize::new(bytes).unwrap(),
        policy,
    }
}

#[tokio::test(start_paused = true)]
async fn buffered_messages_arrive_exactly_once_and_in_order_after_a_restart() {
    let mut server = TestServer::start_quiet().await;
    let recorder = Recorder::default();
    let config = WsConfig::builder(server.url())
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    for n in 0..5 {
        client.send(format!("a{n}")).await.unwrap();
    }
    server.wait_received(5).await;

    server.stop().await;
    wait_status(&client, |s| {
        matches!(s, Status::Reconnecting { attempt: 3, .. })
    })
    .await;
    let futures: Vec<SendFuture> = (0..100).map(|n| client.send(format!("b{n}"))).collect();
    assert_eq!(client.stats().buffered, 100);
    server.restart().await;
    for future in futures {
        future.await.unwrap();
    }

    let expected: Vec<String> = (0..5)
        .map(|n| format!("a{n}"))
        .chain((0..100).map(|n| format!("b{n}")))
        .collect();
    assert_eq!(server.wait_received(105).await, expected);
    // Nothing is sent twice, however long the client lives on.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(server.received(), expected);
    let stats = client.stats();
    assert_eq!((stats.sent, stats.dropped, stats.buffered), (105, 0, 0));
    assert!(
        recorder
            .events()
            .contains(&WsEvent::Buffered { queued: 100 })
    );
    assert!(recorder.events().iter().any(|e| matches!(
        e,
        WsEvent::Connected {
            reconnect: true,
            buffered: 100,
            ..
        }
    )));
}

/// Sends `m1`..`m5` to a client that cannot connect, then lets it connect; returns each send's
/// outcome as soon as known (`None` while pending), what the server got, and the drop events.
async fn overflow(
    limits: BufferLimits,
) -> (
    Vec<Option<Result<(), SendError>>>,
    Vec<String>,
    Vec<SendError>,
    u64,
) {
    let addr = vacant_addr().await;
    let recorder = Recorder::default();
    let config = WsConfig::builder(format!("ws://{addr}"))
        .buffer(limits)
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    wait_status(&client, |s| matches!(s, Status::Reconnecting { .. })).await;
    let mut futures: Vec<SendFuture> = (1..=5).map(|n| client.send(format!("m{n}"))).collect();
    let early: Vec<Option<Result<(), SendError>>> =
        futures.iter_mut().map(|f| f.now_or_never()).collect();

    let server = TestServer::start_on(addr).await;
    client.connected().await.unwrap();
    let dropped = client.stats().dropped;
    let mut outcomes = Vec::new();
    for (future, early) in futures.into_iter().zip(early) {
        outcomes.push(match early {
            Some(result) => Some(result),
            None => Some(future.await),
        });
    }
    let delivered = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Ok(()))))
        .count();
    let received = server.wait_received(delivered).await;
    let drops = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            WsEvent::Dropped { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    (outcomes, received, drops, dropped)
}

#[tokio::test(start_paused = true)]
async fn reject_new_fails_the_new_message_at_once() {
    let (outcomes, received, drops, dropped) =
        overflow(limits(3, 1024, OverflowPolicy::RejectNew)).await;
    let ok = Some(Ok(()));
    let full = Some(Err(SendError::BufferFull));
    assert_eq!(outcomes, [ok.clone(), ok.clone(), ok, full.clone(), full]);
    assert_eq!(received, ["m1", "m2", "m3"]);
    assert_eq!(drops, [SendError::BufferFull, SendError::BufferFull]);
    assert_eq!(dropped, 2);
}

#[tokio::test(start_paused = true)]
async fn drop_oldest_evicts_the_oldest_messages() {
    let (outcomes, received, drops, dropped) =
        overflow(limits(3, 1024, OverflowPolicy::DropOldest)).await;
    let ok = Some(Ok(()));
    let evicted = Some(Err(SendError::Evicted));
    assert_eq!(
        outcomes,
        [evicted.clone(), evicted, ok.clone(), ok.clone(), ok]
    );
    assert_eq!(received, ["m3", "m4", "m5"]);
    assert_eq!(drops, [SendError::Evicted, SendError::Evicted]);
    assert_eq!(dropped, 2);
}

#[tokio::test(start_paused = true)]
async fn drop_newest_evicts_the_most_recently_buffered_message() {
    let (outcomes, received, drops, dropped) =
        overflow(limits(3, 1024, OverflowPolicy::DropNewest)).await;
    let ok = Some(Ok(()));
    let evicted = Some(Err(SendError::Evicted));
    assert_eq!(
        outcomes,
        [ok.clone(), ok.clone(), evicted.clone(), evicted, ok]
    );
    assert_eq!(received, ["m1", "m2", "m5"]);
    assert_eq!(drops, [SendError::Evicted, SendError::Evicted]);
    assert_eq!(dropped, 2);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_first_asked_after_later_messages_were_written_is_still_right() {
    let addr = vacant_addr().await;
    let config = WsConfig::builder(format!("ws://{addr}"))
        .buffer(limits(2, 1024, OverflowPolicy::DropOldest))
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    wait_status(&client, |s| matches!(s, Status::Reconnecting { .. })).await;
    // None of these futures is polled before the connection is up.
    let evicted = client.send("m1");
    drop(client.send("m2")); // evicted too; nobody asks
    let kept = client.send("m3");
    let last = client.send("m4");

    let server = TestServer::start_on(addr).await;
    assert_eq!(last.await, Ok(()));
    assert_eq!(server.wait_received(2).await, ["m3", "m4"]);
    assert_eq!(evicted.await, Err(SendError::Evicted));
    assert_eq!(kept.await, Ok(()));
    assert_eq!(client.stats().dropped, 2);

    // Written while connected, asked long after.
    let early = client.send("m5");
    client.send("m6").await.unwrap();
    assert_eq!(early.await, Ok(()));
    client.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_byte_limit_applies_and_an_oversized_message_is_rejected() {
    // Five messages of 2 bytes in a 5-byte buffer: two fit.
    let (outcomes, received, drops, _) = overflow(limits(100, 5, OverflowPolicy::DropOldest)).await;
    let ok = Some(Ok(()));
    let evicted = Some(Err(SendError::Evicted));
    assert_eq!(
        outcomes,
        [evicted.clone(), evicted.clone(), evicted, ok.clone(), ok]
    );
    assert_eq!(received, ["m4", "m5"]);
    assert_eq!(drops.len(), 3);

    let config = WsConfig::builder(format!("ws://{}", vacant_addr().await))
        .buffer(limits(100, 5, OverflowPolicy::DropOldest))
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    assert_eq!(
        client.send("too long").await,
        Err(SendError::TooLarge { len: 8, limit: 5 })
    );
    assert_eq!(client.stats().dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn on_connect_messages_go_first_on_every_connection() {
    let mut server = TestServer::start_quiet().await;
    let config = WsConfig::builder(server.url())
        .on_connect(|info| vec![Message::text(format!("subscribe {}", info.connection))])
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    let first = client.send("queued before connecting");
    first.await.unwrap();
    server.stop().await;
    wait_status(&client, |s| matches!(s, Status::Reconnecting { .. })).await;
    let second = client.send("queued while down");
    server.restart().await;
    second.await.unwrap();
    assert_eq!(
        server.wait_received(4).await,
        [
            "subscribe 1",
            "queued before connecting",
            "subscribe 2",
            "queued while down"
        ]
    );
}

#[tokio::test]
async fn close_writes_what_was_queued_before_closing() {
    let server = TestServer::start_quiet().await;
    let config = WsConfig::builder(server.url()).build().unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    let futures: Vec<SendFuture> = (0..200).map(|n| client.send(format!("{n}"))).collect();
    client.close().await.unwrap();
    for future in futures {
        future.await.unwrap();
    }
    let expected: Vec<String> = (0..200).map(|n| format!("{n}")).collect();
    assert_eq!(server.wait_received(200).await, expected);
}

#[tokio::test(start_paused = true)]
async fn close_on_a_dead_socket_is_bounded_by_the_close_timeout() {
    let server = TestServer::start_quiet().await;
    let config = WsConfig::builder(server.url())
        .no_heartbeat()
        .close_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    server.go_silent();
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        client.close().await,
        Err(palisade_ws::CloseError::TimedOut(Duration::from_secs(2)))
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(client.status(), Status::Disconnected);
    assert_eq!(messages.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_closes_the_client() {
    let server = TestServer::start().await;
    let recorder = Recorder::default();
    let config = WsConfig::builder(server.url())
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    let mut status = client.watch_status();
    drop(client);
    drop(messages);
    status.wait_for(Status::is_final).await.unwrap();
    assert!(recorder.events().contains(&WsEvent::Closed { clean: true }));
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(server.accept_times().len(), 1);
}
