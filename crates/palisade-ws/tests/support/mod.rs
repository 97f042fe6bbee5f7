//! A real in-process WebSocket server (tokio-tungstenite) with fault injection: refuse the
//! handshake N times, drop every connection, go silent while keeping TCP open, close with a
//! code, stop, and restart on the same port.
//!
//! It runs on the test's runtime, so under `start_paused` its accept times are on the paused
//! clock too.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use palisade_core::event::{Listener, listener_fn};
use palisade_ws::WsEvent;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[derive(Debug, Clone)]
enum Command {
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Stop reading (no pongs, nothing) but keep the TCP connection open.
    Silent,
    /// Send a close frame with this code.
    Close(u16),
    /// Send this text to the client.
    Send(String),
}

struct State {
    /// Bumped on every change below, so tests wait for events instead of polling.
    changed: watch::Sender<()>,
    /// Handshakes still to refuse with 503.
    refuse: AtomicU32,
    /// When each TCP connection was accepted (paused clock under `start_paused`).
    accepts: Mutex<Vec<Instant>>,
    /// Handshakes completed.
    established: AtomicU32,
    /// Every text message received, in order, across connections.
    received: Mutex<Vec<String>>,
    /// Header values of `x-token` seen on handshakes.
    tokens: Mutex<Vec<String>>,
}

pub struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
    commands: broadcast::Sender<Command>,
    echo: bool,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// An echo server on an ephemeral port.
    pub async fn start() -> Self {
        Self::start_with(None, true).await
    }

    /// A server that records but does not echo.
    pub async fn start_quiet() -> Self {
        Self::start_with(None, false).await
    }

    /// An echo server on `addr` (a port a client is already trying).
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(Some(addr), true).await
    }

    async fn start_with(addr: Option<SocketAddr>, echo: bool) -> Self {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let (commands, _) = broadcast::channel(64);
        let state = Arc::new(State {
            changed: watch::Sender::new(()),
            refuse: AtomicU32::new(0),
            accepts: Mutex::default(),
            established: AtomicU32::new(0),
            received: Mutex::default(),
            tokens: Mutex::default(),
        });
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&state),
            commands.clone(),
            echo,
        ));
        Self {
            addr,
            state,
            commands,
            echo,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Refuses the next `n` handshakes with HTTP 503.
    pub fn refuse_next(&self, n: u32) {
        self.state.refuse.store(n, Ordering::SeqCst);
    }

    /// Drops every open connection without a close frame.
    pub fn drop_connections(&self) {
        let _ = self.commands.send(Command::Drop);
    }

    /// Every open connection stops reading and answering, TCP stays open.
    pub fn go_silent(&self) {
        let _ = self.commands.send(Command::Silent);
    }

    /// Every open connection sends a close frame with `code`.
    pub fn close_connections(&self, code: u16) {
        let _ = self.commands.send(Command::Close(code));
    }

    /// Sends `text` on every open connection.
    pub fn push(&self, text: &str) {
        let _ = self.commands.send(Command::Send(text.to_owned()));
    }

    /// Stops listening and drops every connection.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.drop_connections();
        // Let the connection tasks see it.
        tokio::task::yield_now().await;
    }

    /// Listens again on the same port (after `stop`), with fresh connection state but the
    /// same records.
    pub async fn restart(&mut self) {
        assert!(self.task.is_none(), "stop the server before restarting it");
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind same port");
        self.task = Some(tokio::spawn(accept_loop(
            listener,
            Arc::clone(&self.state),
            self.commands.clone(),
            self.echo,
        )));
    }

    pub fn accept_times(&self) -> Vec<Instant> {
        self.state.accepts.lock().unwrap().clone()
    }

    pub fn established(&self) -> u32 {
        self.state.established.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<String> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn tokens(&self) -> Vec<String> {
        self.state.tokens.lock().unwrap().clone()
    }

    /// Waits until `n` text messages were received.
    pub async fn wait_received(&self, n: usize) -> Vec<String> {
        self.wait_until(|s| s.received().len() >= n).await;
        self.received()
    }

    /// Waits until `n` handshakes completed.
    pub async fn wait_established(&self, n: u32) {
        self.wait_until(|s| s.established() >= n).await;
    }

    async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        let mut changed = self.state.changed.subscribe();
        while !done(self) {
            changed.changed().await.expect("the state lives in self");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = self.commands.send(Command::Drop);
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    commands: broadcast::Sender<Command>,
    echo: bool,
) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        state.accepts.lock().unwrap().push(Instant::now());
        state.changed.send_replace(());
        tokio::spawn(serve(
            socket,
            Arc::clone(&state),
            commands.subscribe(),
            echo,
        ));
    }
}

async fn serve(
    socket: TcpStream,
    state: Arc<State>,
    mut commands: broadcast::Receiver<Command>,
    echo: bool,
) {
    let refuse = state
        .refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let tokens = Arc::clone(&state);
    // tungstenite's handshake callback returns its error response by value.
    #[allow(clippy::result_large_err)]
    let callback =
        move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            if let Some(token) = request.headers().get("x-token") {
                tokens
                    .tokens
                    .lock()
                    .unwrap()
                    .push(token.to_str().unwrap().to_owned());
            }
            if refuse {
                let mut error = ErrorResponse::new(Some("try later".into()));
                *error.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Err(error);
            }
            Ok(response)
        };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(socket, callback).await else {
        return;
    };
    state.established.fetch_add(1, Ordering::SeqCst);
    state.changed.send_replace(());
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(message)) => {
                    if let Message::Text(text) = &message {
                        state.received.lock().unwrap().push(text.as_str().to_owned());
                        state.changed.send_replace(());
                    }
                    if echo && (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            command = commands.recv() => match command {
                Ok(Command::Drop) | Err(_) => return,
                Ok(Command::Silent) => {
                    // Hold the socket, read nothing, until told to drop it.
                    loop {
                        match commands.recv().await {
                            Ok(Command::Drop) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                }
                Ok(Command::Close(code)) => {
                    let frame = CloseFrame { code: code.into(), reason: "".into() };
                    let _ = ws.close(Some(frame)).await;
                }
                Ok(Command::Send(text)) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

/// Records every event a client emits, with the (paused) time it came.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<(Instant, WsEvent)>>>);

impl Recorder {
    pub fn listener(&self) -> impl Listener<WsEvent> + 'static {
        let events = Arc::clone(&self.0);
        listener_fn(move |event: &WsEvent| {
            events.lock().unwrap().push((Instant::now(), event.clone()));
        })
    }

    pub fn events(&self) -> Vec<WsEvent> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    pub fn timed(&self) -> Vec<(Instant, WsEvent)> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self, f: impl Fn(&WsEvent) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|(_, e)| f(e)).count()
    }
}

/// An address nothing listens on (yet): connections to it are refused.
pub async fn vacant_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Waits for a status matching `f` and returns it.
pub async fn wait_status(
    handle: &palisade_ws::WsHandle,
    f: impl FnMut(&palisade_ws::Status) -> bool,
) -> palisade_ws::Status {
    *handle
        .watch_status()
        .wait_for(f)
        .await
        .expect("client alive")
}
