//! The resilient WebSocket client against an in-process echo server (tokio-tungstenite, on
//! loopback) that drops the first connection without a close frame. Messages sent while the
//! client waits to reconnect stay in its buffer and are delivered, in order, once it is back.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use palisade::core::Backoff;
use palisade::core::event::listener_fn;
use palisade::ws::{Message, Status, WsConfig, WsEvent};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::error::{Context, TourError};

/// The server drops the first connection after echoing this many messages.
const ECHOES_BEFORE_DROP: usize = 3;
/// Messages sent while the client is disconnected.
const SENT_WHILE_DOWN: usize = 3;
/// The client's wait before reconnecting.
const RECONNECT_DELAY: Duration = Duration::from_millis(300);
/// The longest any step may take before the section gives up.
const STEP: Duration = Duration::from_secs(5);

/// Runs the section; returns its summary line.
pub(crate) async fn run() -> Result<String, TourError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the echo server's port")?;
    let url = format!(
        "ws://{}",
        listener
            .local_addr()
            .context("reading the echo server's address")?
    );
    let server = tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((socket, _)) = listener.accept().await {
            connections += 1;
            let drop_after = (connections == 1).then_some(ECHOES_BEFORE_DROP);
            tokio::spawn(echo(socket, drop_after));
        }
    });

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let config = WsConfig::builder(url)
        .backoff(Backoff::constant(RECONNECT_DELAY))
        .listener(listener_fn(move |event: &WsEvent| {
            // The receiver lives until the end of the section.
            let _ = events_tx.send(event.clone());
        }))
        .build()
        .context("configuring the WebSocket client")?;
    let (client, mut messages) = palisade::ws::connect(config).context("starting the client")?;

    let mut echoes = Vec::new();
    for i in 1..=ECHOES_BEFORE_DROP {
        client
            .send(format!("tick {i}"))
            .await
            .context("sending before the drop")?;
    }
    for _ in 0..ECHOES_BEFORE_DROP {
        echoes.push(receive(&mut messages).await?);
    }
    println!("  connected; echoed: {}", echoes.join(", "));

    // The server has dropped the connection: wait until the client knows.
    let mut status = client.watch_status();
    tokio::time::timeout(
        STEP,
        status.wait_for(|s| matches!(s, Status::Reconnecting { .. })),
    )
    .await
    .context("waiting for the client to notice the drop")?
    .context("the client's status")?;
    let pending: Vec<_> = (ECHOES_BEFORE_DROP + 1..=ECHOES_BEFORE_DROP + SENT_WHILE_DOWN)
        .map(|i| client.send(format!("tick {i}")))
        .collect();
    let buffered = client.stats().buffered;
    println!(
        "  connection dropped; {buffered} messages sent while disconnected wait in the buffer"
    );
    for sent in pending {
        tokio::time::timeout(STEP, sent)
            .await
            .context("waiting for a buffered message")?
            .context("a buffered message")?;
    }
    let mut after = Vec::new();
    for _ in 0..SENT_WHILE_DOWN {
        after.push(receive(&mut messages).await?);
    }
    client.close().await.context("closing the client")?;
    server.abort();

    // The client's own account of what happened.
    while let Ok(event) = events.try_recv() {
        match event {
            WsEvent::Disconnected {
                reason,
                connected_for,
            } => println!("    event: disconnected ({reason}) after {connected_for:?}"),
            WsEvent::Reconnecting { attempt, delay } => println!(
                "    event: reconnecting, attempt {attempt} in {} ms",
                delay.as_millis()
            ),
            WsEvent::Connected {
                reconnect: true,
                buffered,
                ..
            } => {
                println!("    event: reconnected, writing {buffered} buffered messages");
            }
            _ => {}
        }
    }
    println!("  echoed after reconnecting: {}", after.join(", "));
    let stats = client.stats();
    if stats.dropped != 0 || after.len() != SENT_WHILE_DOWN || buffered != SENT_WHILE_DOWN {
        return Err(TourError::check(
            "websocket",
            format!(
                "{} dropped, {} of {SENT_WHILE_DOWN} delivered after the drop",
                stats.dropped,
                after.len()
            ),
        ));
    }
    Ok(format!(
        "{} connects ({} reconnect); {} messages buffered while down, all delivered after the reconnect; {} sent, {} received, {} dropped",
        stats.connects, stats.reconnects, buffered, stats.sent, stats.received, stats.dropped
    ))
}

/// The next message's text, within [`STEP`].
async fn receive(messages: &mut palisade::ws::Messages) -> Result<String, TourError> {
    let message = tokio::time::timeout(STEP, messages.recv())
        .await
        .context("waiting for an echo")?
        .context("the client's message stream")?;
    Ok(message_text(&message))
}

fn message_text(message: &Message) -> String {
    message
        .as_text()
        .map_or_else(|| format!("<{} bytes>", message.len()), str::to_owned)
}

/// Echoes text and binary messages; after `drop_after` of them, drops the connection without
/// a close frame (as a crashed peer or a cut network would).
async fn echo(socket: TcpStream, drop_after: Option<usize>) {
    let _ = socket.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
        return;
    };
    let mut echoed = 0;
    while let Some(Ok(message)) = ws.next().await {
        if message.is_text() || message.is_binary() {
            if ws.send(message).await.is_err() {
                return;
            }
            echoed += 1;
            if Some(echoed) == drop_after {
                return;
            }
        }
    }
}
