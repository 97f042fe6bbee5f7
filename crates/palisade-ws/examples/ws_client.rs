//! The resilient WebSocket client through a forced disconnect: status changes, messages
//! buffered while disconnected and delivered after the reconnect, and a clean close.
//!
//! ```sh
//! cargo run -p palisade-ws --example ws_client            # against its own echo server
//! cargo run -p palisade-ws --example ws_client -- ws://HOST:PORT/PATH   # any echo server
//! ```
//!
//! Without an argument it starts a tokio-tungstenite echo server on a loopback port in the
//! same process. The client connects, sends two messages and reads their echoes. Then the
//! server drops the connection once (TCP closed, no close frame): the client reports the
//! abnormal disconnect and waits a backoff delay (`Reconnecting`). Three messages sent in
//! that window wait in the send buffer (`stats().buffered` is 3); after the reconnect they
//! are written in order, their send futures resolve, and their echoes arrive. Finally
//! `close()` makes the close handshake and the client ends in `Disconnected`, never to
//! reconnect. With a URL the forced disconnect is skipped (the example does not control
//! that server).
//!
//! The client gives up after 5 connection attempts in a row (`max_attempts`), so a wrong URL
//! ends with an error instead of retrying forever. Every line starting with `event` comes
//! from the client's listener (`WsEvent`); each line starts with the milliseconds since
//! start. The reconnect is attempt 2, not 1: a connection that stayed up less than
//! `min_connected` (5 s) does not start the count over, so a server that accepts and drops
//! at once keeps being backed off. Expected output (times vary):
//!
//! ```text
//! echo server on ws://127.0.0.1:37409
//! [   0 ms] event connecting (attempt 1)
//! [   5 ms] event connected (attempt 1, 0 buffered messages written)
//! [   5 ms] status connected
//! [   6 ms] echo "hello 1"
//! [   6 ms] echo "hello 2"
//! [   6 ms] server drops the connection
//! [   6 ms] event disconnected: abnormal (up 0ms)
//! [   6 ms] event reconnecting: attempt 2 in 250ms
//! [   6 ms] status reconnecting (attempt 2 in 250.716022ms)
//! [   6 ms] event buffered (1 waiting)
//! [   6 ms] event buffered (2 waiting)
//! [   6 ms] event buffered (3 waiting)
//! [   6 ms] sent 3 messages while disconnected; stats().buffered = 3
//! [ 261 ms] event connecting (attempt 2)
//! [ 262 ms] event reconnected (attempt 2, 3 buffered messages written)
//! [ 262 ms] the 3 buffered messages were written
//! [ 262 ms] echo "while away 1"
//! [ 262 ms] echo "while away 2"
//! [ 262 ms] echo "while away 3"
//! [ 262 ms] stats: connects 2, reconnects 1, sent 5, received 5, dropped 0, buffered 0
//! [ 263 ms] event disconnected: closed (up 0ms)
//! [ 263 ms] event closed (clean: true)
//! [ 263 ms] status disconnected; message stream ended: true
//! ```

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use palisade_core::event::listener_fn;
use palisade_ws::{Backoff, Messages, Status, WsConfig, WsEvent};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An echo server on loopback that can drop its connections on command.
struct EchoServer {
    addr: SocketAddr,
    drop_all: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    async fn start() -> Result<Self, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (drop_all, _) = broadcast::channel(4);
        let commands = drop_all.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                // Echo at once (no Nagle delay on small frames).
                let _ = socket.set_nodelay(true);
                let mut dropped = commands.subscribe();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
                        return;
                    };
                    loop {
                        tokio::select! {
                            frame = ws.next() => match frame {
                                Some(Ok(message)) if message.is_text() || message.is_binary() => {
                                    if ws.send(message).await.is_err() {
                                        return;
                                    }
                                }
                                // Pings are answered by tungstenite; a close ends the loop
                                // once the handshake is done.
                                Some(Ok(_)) => {}
                                Some(Err(_)) | None => return,
                            },
                            // Drop the socket: TCP closes without a close frame.
                            _ = dropped.recv() => return,
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            drop_all,
            task,
        })
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Drops every open connection, as a crashing proxy would.
    fn drop_connections(&self) {
        // No receiver only means no connection is open.
        let _ = self.drop_all.send(());
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_connections();
    }
}

/// Prints a line with the milliseconds since `start`.
fn say(start: Instant, line: impl std::fmt::Display) {
    println!("[{:>4} ms] {line}", start.elapsed().as_millis());
}

/// One line per client event.
fn describe(event: &WsEvent) -> String {
    match event {
        WsEvent::Connecting { attempt } => format!("connecting (attempt {attempt})"),
        WsEvent::ConnectFailed { attempt, failure } => {
            format!("connect attempt {attempt} failed: {failure}")
        }
        WsEvent::Connected {
            attempt,
            reconnect,
            buffered,
        } => format!(
            "{} (attempt {attempt}, {buffered} buffered messages written)",
            if *reconnect {
                "reconnected"
            } else {
                "connected"
            }
        ),
        WsEvent::DeadPeer { silent_for } => format!("dead peer (silent for {silent_for:?})"),
        WsEvent::Disconnected {
            reason,
            connected_for,
        } => format!(
            "disconnected: {reason} (up {}ms)",
            connected_for.as_millis()
        ),
        WsEvent::Reconnecting { attempt, delay } => {
            format!("reconnecting: attempt {attempt} in {}ms", delay.as_millis())
        }
        WsEvent::Buffered { queued } => format!("buffered ({queued} waiting)"),
        WsEvent::Dropped { error, len } => format!("dropped a {len}-byte message: {error}"),
        WsEvent::Failed { attempts } => format!("failed after {attempts} attempts"),
        WsEvent::Closed { clean } => format!("closed (clean: {clean})"),
        other => format!("{other:?}"),
    }
}

/// Reads the next message, for at most 5 s, and prints it.
async fn expect_echo(messages: &mut Messages, start: Instant) -> Result<(), BoxError> {
    let message = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .map_err(|_| "no echo within 5 s (is the server an echo server?)")?
        .ok_or("the client ended before the echo arrived")?;
    match message.as_text() {
        Some(text) => say(start, format!("echo {text:?}")),
        None => say(start, format!("echo of {} binary bytes", message.len())),
    }
    Ok(())
}

// One thread: the client's driver publishes each status and event before `main` runs
// again, so the lines come out in the order things happened.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let start = Instant::now();
    let (url, server) = match std::env::args().nth(1) {
        Some(url) => (url, None),
        None => {
            let server = EchoServer::start().await?;
            println!("echo server on {}", server.url());
            (server.url(), Some(server))
        }
    };

    // Reconnect delays from 500 ms (equal jitter: 250 to 500 ms), doubling up to 5 s.
    let backoff = Backoff::exponential(Duration::from_millis(500), 2.0, Duration::from_secs(5))?
        .with_jitter(palisade_core::Jitter::Equal);
    let config = WsConfig::builder(url)
        .backoff(backoff)
        .max_attempts(NonZeroU32::new(5).expect("5 is not zero"))
        .listener(listener_fn(move |event: &WsEvent| {
            say(start, format!("event {}", describe(event)));
        }))
        .build()?;
    let (client, mut messages) = palisade_ws::connect(config)?;

    client
        .connected()
        .await
        .map_err(|status| format!("could not connect: {status}"))?;
    say(start, format!("status {}", client.status()));
    for n in 1..=2 {
        client.send(format!("hello {n}")).await?;
    }
    for _ in 1..=2 {
        expect_echo(&mut messages, start).await?;
    }

    if let Some(server) = &server {
        say(start, "server drops the connection");
        server.drop_connections();
        let mut status = client.watch_status();
        let now = *status
            .wait_for(|s| matches!(s, Status::Reconnecting { .. }) || s.is_final())
            .await?;
        say(start, format!("status {now}"));

        // Sent while disconnected: queued now, written after the reconnect.
        let pending: Vec<_> = (1..=3)
            .map(|n| client.send(format!("while away {n}")))
            .collect();
        say(
            start,
            format!(
                "sent {} messages while disconnected; stats().buffered = {}",
                pending.len(),
                client.stats().buffered
            ),
        );
        for sent in pending {
            sent.await?;
        }
        say(start, "the 3 buffered messages were written");
        for _ in 1..=3 {
            expect_echo(&mut messages, start).await?;
        }
    } else {
        say(
            start,
            "(a URL was given: the forced disconnect needs the built-in server, skipped)",
        );
    }

    let s = client.stats();
    say(
        start,
        format!(
            "stats: connects {}, reconnects {}, sent {}, received {}, dropped {}, buffered {}",
            s.connects, s.reconnects, s.sent, s.received, s.dropped, s.buffered
        ),
    );
    client.close().await?;
    let ended = messages.recv().await.is_none();
    say(
        start,
        format!("status {}; message stream ended: {ended}", client.status()),
    );
    drop(server);
    Ok(())
}
