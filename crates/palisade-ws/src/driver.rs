//! The task behind a client: connects, reconnects with backoff, writes the send buffer, reads
//! into the receive buffer, pings, and closes.
//!
//! While connected, one hand-written poll drives the socket's write and read sides, the
//! heartbeat timer and the close request, so a message costs no extra task hop beyond the
//! one from the application to this task and back.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WireMessage;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Payload;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::{ConnectInfo, Heartbeat, WsConfig};
use crate::error::SendError;
use crate::event::{ConnectFailure, DisconnectReason, WsEvent};
use crate::message::Message;
use crate::shared::{Ack, Pending, Shared, lock};
use crate::status::Status;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames read in one poll before the driver yields to other tasks.
const READ_BUDGET: usize = 256;

/// The status code of a normal closure.
const NORMAL_CLOSE: u16 = 1000;
/// What a close frame without a status code is reported as (RFC 6455, 7.1.5).
const NO_STATUS: u16 = 1005;

/// A write failed (logged where it happened); the connection is lost.
struct WriteFailed;

impl WriteFailed {
    fn log(error: &WsError) -> Self {
        tracing::debug!(%error, "ws: write failed");
        WriteFailed
    }
}

/// How the client ended.
enum End {
    /// Closed on purpose.
    Closed { clean: bool },
    /// The server closed normally and that is not reconnected.
    PeerClosedNormally,
    /// Out of attempts.
    Failed { attempts: u32 },
}

/// How the connected phase ended.
enum Step {
    CloseRequested,
    Lost(DisconnectReason),
}

/// How a connection ended.
enum Exit {
    Closed { clean: bool },
    Lost(DisconnectReason),
}

enum Phase {
    /// The next timer expiry sends a ping.
    Idle,
    /// A ping went out at `since` with `frames` frames read so far; the next expiry checks
    /// that something arrived.
    Awaiting { frames: u64, since: Instant },
}

struct HeartbeatTimer {
    config: Heartbeat,
    sleep: Pin<Box<Sleep>>,
    phase: Phase,
    /// Reading was paused (the application's buffer was full) since the last ping: silence
    /// proves nothing then.
    paused: bool,
}

pub(crate) struct Driver {
    shared: Arc<Shared>,
    config: WsConfig,
    /// Messages taken from the send buffer and not yet handed to the socket.
    batch: VecDeque<Pending>,
    /// Messages handed to the socket since the last completed flush.
    unconfirmed: Vec<(Option<Ack>, usize)>,
    /// Whether a flush is owed.
    dirty: bool,
    /// Messages read and not yet moved to the receive buffer.
    incoming: VecDeque<Message>,
    /// How many more messages the receive buffer takes; 0 means "ask it".
    room: usize,
    /// Frames of any kind read on this connection.
    frames: u64,
    /// The peer's close code, once its close frame arrived.
    peer_close: Option<u16>,
    heartbeat: Option<HeartbeatTimer>,
    finished: bool,
    #[cfg(feature = "rustls")]
    tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
}

impl Driver {
    pub(crate) fn new(shared: Arc<Shared>, config: WsConfig) -> Self {
        let heartbeat = config.heartbeat.map(|config| HeartbeatTimer {
            config,
            sleep: Box::pin(tokio::time::sleep(config.interval)),
            phase: Phase::Idle,
            paused: false,
        });
        Self {
            shared,
            config,
            batch: VecDeque::new(),
            unconfirmed: Vec::new(),
            dirty: false,
            incoming: VecDeque::new(),
            room: 0,
            frames: 0,
            peer_close: None,
            heartbeat,
            finished: false,
            #[cfg(feature = "rustls")]
            tls: std::sync::OnceLock::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let end = self.reconnect_loop().await;
        self.finish(end);
    }

    fn set_status(&self, status: Status) {
        self.shared.status.send_replace(status);
    }

    /// Connects, serves each connection, and waits between attempts, until closed or out of
    /// attempts.
    async fn reconnect_loop(&mut self) -> End {
        let backoff = self.config.backoff;
        let mut delays = backoff.delays();
        let mut run_start = Instant::now();
        let mut attempt: u32 = 0;
        let mut connections: u64 = 0;
        loop {
            if self.shared.close_requested() {
                return End::Closed { clean: true };
            }
            attempt = attempt.saturating_add(1);
            self.set_status(Status::Connecting { attempt });
            self.shared.emit(WsEvent::Connecting { attempt });
            tracing::debug!(attempt, "ws: connecting");
            let Some(result) = until_close(&self.shared, self.connect_once()).await else {
                return End::Closed { clean: true };
            };
            match result {
                Ok(ws) => {
                    connections += 1;
                    let since = Instant::now();
                    let exit = self
                        .serve(
                            ws,
                            ConnectInfo {
                                attempt,
                                connection: connections,
                            },
                        )
                        .await;
                    let connected_for = since.elapsed();
                    match exit {
                        Exit::Closed { clean } => {
                            self.disconnected(DisconnectReason::Closed, connected_for);
                            return End::Closed { clean };
                        }
                        Exit::Lost(reason) => {
                            self.disconnected(reason, connected_for);
                            if reason == (DisconnectReason::PeerClosed { code: NORMAL_CLOSE })
                                && !self.config.reconnect_on_normal_close
                            {
                                return End::PeerClosedNormally;
                            }
                            if connected_for >= self.config.min_connected {
                                // It stayed up: the next loss starts a fresh run of attempts.
                                delays = backoff.delays();
                                run_start = Instant::now();
                                attempt = 0;
                            }
                        }
                    }
                }
                Err(failure) => {
                    self.shared
                        .counters
                        .connect_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.shared
                        .emit(WsEvent::ConnectFailed { attempt, failure });
                }
            }
            if self.shared.close_requested() {
                return End::Closed { clean: true };
            }
            if self
                .config
                .max_attempts
                .is_some_and(|max| attempt >= max.get())
            {
                return End::Failed { attempts: attempt };
            }
            let Some(delay) = delays.next_after(run_start.elapsed()) else {
                return End::Failed { attempts: attempt };
            };
            let next = attempt.saturating_add(1);
            self.set_status(Status::Reconnecting {
                attempt: next,
                next_in: delay,
            });
            self.shared.emit(WsEvent::Reconnecting {
                attempt: next,
                delay,
            });
            tracing::info!(attempt = next, ?delay, "ws: reconnecting");
            if until_close(&self.shared, tokio::time::sleep(delay))
                .await
                .is_none()
            {
                return End::Closed { clean: true };
            }
        }
    }

    fn disconnected(&self, reason: DisconnectReason, connected_for: Duration) {
        match reason {
            DisconnectReason::Closed => {
                tracing::debug!(?connected_for, "ws: connection closed");
            }
            _ => tracing::warn!(%reason, ?connected_for, "ws: connection lost"),
        }
        self.shared.emit(WsEvent::Disconnected {
            reason,
            connected_for,
        });
    }

    /// One connection attempt, within the connect timeout.
    async fn connect_once(&self) -> Result<WsStream, ConnectFailure> {
        let attempt = async {
            let request = self.config.endpoint.request().await.map_err(|error| {
                tracing::warn!(%error, "ws: endpoint could not make a request");
                ConnectFailure::Endpoint
            })?;
            let nodelay = self.config.nodelay;
            #[cfg(feature = "rustls")]
            let result = {
                let connector = if request.uri().scheme_str() == Some("wss") {
                    Some(tokio_tungstenite::Connector::Rustls(self.tls_config()?))
                } else {
                    None
                };
                tokio_tungstenite::connect_async_tls_with_config(request, None, nodelay, connector)
                    .await
            };
            #[cfg(not(feature = "rustls"))]
            let result = tokio_tungstenite::connect_async_with_config(request, None, nodelay).await;
            result.map(|(ws, _response)| ws).map_err(|error| {
                let failure = classify_connect_error(&error);
                tracing::warn!(%error, %failure, "ws: connection attempt failed");
                failure
            })
        };
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(timeout = ?self.config.connect_timeout, "ws: connection attempt timed out");
                Err(ConnectFailure::TimedOut)
            }
        }
    }

    #[cfg(feature = "rustls")]
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, ConnectFailure> {
        if let Some(config) = &self.config.tls {
            return Ok(Arc::clone(config));
        }
        if let Some(config) = self.tls.get() {
            return Ok(Arc::clone(config));
        }
        let config = crate::tls::default_client_config().map_err(|error| {
            tracing::warn!(%error, "ws: could not build the TLS configuration");
            ConnectFailure::Io
        })?;
        Ok(Arc::clone(self.tls.get_or_init(|| config)))
    }

    /// Serves one established connection until it is lost or closed.
    async fn serve(&mut self, mut ws: WsStream, info: ConnectInfo) -> Exit {
        if let Some(hook) = &self.config.on_connect {
            // The hook's messages go first, ahead of everything buffered.
            for message in hook(&info).into_iter().rev() {
                let len = message.len();
                self.batch.push_front(Pending {
                    message: message.into_wire(),
                    len,
                    ack: None,
                });
            }
        }
        let buffered = {
            let mut outbox = lock(&self.shared.outbox);
            outbox.connected = true;
            outbox.queue.len() + self.batch.iter().filter(|p| p.ack.is_some()).count()
        };
        let counters = &self.shared.counters;
        counters
            .connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if info.is_reconnect() {
            counters
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.set_status(Status::Connected);
        self.shared.emit(WsEvent::Connected {
            attempt: info.attempt,
            reconnect: info.is_reconnect(),
            buffered,
        });
        tracing::info!(
            attempt = info.attempt,
            reconnect = info.is_reconnect(),
            buffered,
            "ws: connected"
        );
        self.frames = 0;
        self.peer_close = None;
        self.room = 0;
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.phase = Phase::Idle;
            heartbeat.paused = false;
            heartbeat
                .sleep
                .as_mut()
                .reset(Instant::now() + heartbeat.config.interval);
        }

        let step = poll_fn(|cx| self.poll_connected(cx, &mut ws)).await;
        let exit = match step {
            Step::CloseRequested => Exit::Closed {
                clean: self.close_gracefully(&mut ws).await,
            },
            Step::Lost(reason) => Exit::Lost(reason),
        };
        lock(&self.shared.outbox).connected = false;
        self.after_connection();
        exit
    }

    /// Settles what the connection left: unconfirmed writes fail (they may or may not have
    /// arrived), unwritten messages go back to the front of the send buffer, received
    /// messages are delivered.
    fn after_connection(&mut self) {
        for (ack, len) in self.unconfirmed.drain(..) {
            self.shared.fail(ack, len, SendError::ConnectionLost);
        }
        self.dirty = false;
        if !self.batch.is_empty() {
            let mut outbox = lock(&self.shared.outbox);
            while let Some(pending) = self.batch.pop_back() {
                // The hook's messages are made again on the next connection.
                if pending.ack.is_some() {
                    outbox.bytes += pending.len;
                    outbox.queue.push_front(pending);
                }
            }
        }
        self.shared.deliver(&mut self.incoming);
    }

    fn poll_connected(&mut self, cx: &mut Context<'_>, ws: &mut WsStream) -> Poll<Step> {
        self.shared.driver.register(cx.waker());
        if self.shared.close_requested() {
            return Poll::Ready(Step::CloseRequested);
        }
        if let Poll::Ready(reason) = self.poll_heartbeat(cx, ws) {
            return Poll::Ready(Step::Lost(reason));
        }
        if self.poll_write(cx, ws).is_err() {
            return Poll::Ready(Step::Lost(self.error_reason()));
        }
        self.poll_read(cx, ws).map(Step::Lost)
    }

    /// Sends pings and declares the peer dead when nothing follows one in time.
    fn poll_heartbeat(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut WsStream,
    ) -> Poll<DisconnectReason> {
        let Some(heartbeat) = &mut self.heartbeat else {
            return Poll::Pending;
        };
        while heartbeat.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match heartbeat.phase {
                Phase::Idle => {
                    // A socket that takes no more writes gets no ping; silence is judged all
                    // the same.
                    match Pin::new(&mut *ws).poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            if Pin::new(&mut *ws)
                                .start_send(WireMessage::Ping(Payload::default()))
                                .is_err()
                            {
                                return Poll::Ready(DisconnectReason::Error);
                            }
                            self.dirty = true;
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(DisconnectReason::Error),
                        Poll::Pending => {}
                    }
                    heartbeat.phase = Phase::Awaiting {
                        frames: self.frames,
                        since: now,
                    };
                    heartbeat.paused = self.room == 0;
                    heartbeat
                        .sleep
                        .as_mut()
                        .reset(now + heartbeat.config.timeout);
                }
                Phase::Awaiting { frames, since } => {
                    if frames == self.frames && !heartbeat.paused && self.room != 0 {
                        let silent_for = now - since;
                        self.shared
                            .counters
                            .dead_peers
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.shared.emit(WsEvent::DeadPeer { silent_for });
                        tracing::warn!(?silent_for, "ws: peer is silent; dropping the connection");
                        return Poll::Ready(DisconnectReason::DeadPeer);
                    }
                    heartbeat.phase = Phase::Idle;
                    let next = (since + heartbeat.config.interval).max(now);
                    heartbeat.sleep.as_mut().reset(next);
                }
            }
        }
        Poll::Pending
    }

    /// Hands buffered messages to the socket and flushes; resolves the send futures of what
    /// a completed flush wrote.
    fn poll_write(&mut self, cx: &mut Context<'_>, ws: &mut WsStream) -> Result<(), WriteFailed> {
        'fill: loop {
            if self.batch.is_empty() {
                let mut outbox = lock(&self.shared.outbox);
                if outbox.queue.is_empty() {
                    break 'fill;
                }
                std::mem::swap(&mut self.batch, &mut outbox.queue);
                outbox.bytes = 0;
            }
            while !self.batch.is_empty() {
                match Pin::new(&mut *ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(error)) => return Err(WriteFailed::log(&error)),
                    // The socket takes no more for now; it wakes this task when it does.
                    Poll::Pending => return Ok(()),
                }
                let Some(pending) = self.batch.pop_front() else {
                    break;
                };
                // Recorded first: if the write fails, its future learns of it.
                self.unconfirmed.push((pending.ack, pending.len));
                self.dirty = true;
                Pin::new(&mut *ws)
                    .start_send(pending.message)
                    .map_err(|error| WriteFailed::log(&error))?;
            }
        }
        if self.dirty {
            match Pin::new(&mut *ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.dirty = false;
                    let mut written = 0;
                    let mut last = None;
                    for (ack, _) in self.unconfirmed.drain(..) {
                        if ack.is_some() {
                            written += 1;
                            last = ack;
                        }
                    }
                    if let Some(last) = last {
                        // Written in order: this settles every message up to `last`.
                        self.shared.written(last);
                        self.shared
                            .counters
                            .sent
                            .fetch_add(written, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Poll::Ready(Err(error)) => return Err(WriteFailed::log(&error)),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Reads frames into the receive buffer until the socket has none, the buffer is full or
    /// the budget is spent; `Ready` when the connection ended.
    fn poll_read(&mut self, cx: &mut Context<'_>, ws: &mut WsStream) -> Poll<DisconnectReason> {
        let mut budget = READ_BUDGET;
        loop {
            if self.room == 0 {
                self.room = self.shared.deliver(&mut self.incoming);
                if self.room == 0 {
                    // Woken by the application when it takes messages.
                    if let Some(heartbeat) = &mut self.heartbeat {
                        heartbeat.paused = true;
                    }
                    return Poll::Pending;
                }
            }
            if budget == 0 {
                self.room = self.shared.deliver(&mut self.incoming);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            match Pin::new(&mut *ws).poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.frames += 1;
                    match frame {
                        WireMessage::Close(close) => {
                            self.peer_close =
                                Some(close.map_or(NO_STATUS, |frame| frame.code.into()));
                        }
                        other => {
                            if let Some(message) = Message::from_wire(other) {
                                self.incoming.push_back(message);
                                self.room -= 1;
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "ws: read failed");
                    self.shared.deliver(&mut self.incoming);
                    let reset = matches!(
                        error,
                        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                    );
                    return Poll::Ready(if reset && self.peer_close.is_none() {
                        DisconnectReason::Abnormal
                    } else {
                        self.error_reason()
                    });
                }
                Poll::Ready(None) => {
                    self.shared.deliver(&mut self.incoming);
                    return Poll::Ready(match self.peer_close {
                        Some(code) => DisconnectReason::PeerClosed { code },
                        None => DisconnectReason::Abnormal,
                    });
                }
                Poll::Pending => {
                    if !self.incoming.is_empty() {
                        self.room = self.shared.deliver(&mut self.incoming);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// An error after the peer's close frame is still the peer closing.
    fn error_reason(&self) -> DisconnectReason {
        match self.peer_close {
            Some(code) => DisconnectReason::PeerClosed { code },
            None => DisconnectReason::Error,
        }
    }

    /// Writes what is queued, makes the close handshake, and waits for the peer's close, all
    /// within the close timeout. Returns whether the handshake finished.
    async fn close_gracefully(&mut self, ws: &mut WsStream) -> bool {
        let timeout = self.config.close_timeout;
        let handshake = async {
            let flushed = poll_fn(|cx| {
                self.shared.driver.register(cx.waker());
                if self.poll_write(cx, ws).is_err() {
                    return Poll::Ready(false);
                }
                if self.batch.is_empty()
                    && !self.dirty
                    && lock(&self.shared.outbox).queue.is_empty()
                {
                    return Poll::Ready(true);
                }
                self.poll_read(cx, ws).map(|_| false)
            })
            .await;
            if !flushed {
                return false;
            }
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            if ws.close(Some(frame)).await.is_err() {
                return false;
            }
            // Data the peer sent before its close frame is still delivered.
            poll_fn(|cx| self.poll_read(cx, ws)).await;
            self.peer_close.is_some()
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(clean) => clean,
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "ws: close handshake timed out; dropping the connection"
                );
                self.shared
                    .close_timed_out
                    .store(true, std::sync::atomic::Ordering::Release);
                false
            }
        }
    }

    /// Ends the client: everything still queued fails, the stream ends, the status becomes
    /// final.
    fn finish(&mut self, end: End) {
        self.finished = true;
        let (status, error, event) = match end {
            End::Closed { clean } => (
                Status::Disconnected,
                SendError::Closed,
                WsEvent::Closed { clean },
            ),
            End::PeerClosedNormally => (
                Status::Disconnected,
                SendError::Closed,
                WsEvent::Closed { clean: true },
            ),
            End::Failed { attempts } => (
                Status::Failed { attempts },
                SendError::Failed,
                WsEvent::Failed { attempts },
            ),
        };
        let queued = {
            let mut outbox = lock(&self.shared.outbox);
            outbox.connected = false;
            outbox.closed.get_or_insert_with(|| error.clone());
            outbox.bytes = 0;
            std::mem::take(&mut outbox.queue)
        };
        // Left unconfirmed only when the task is dropped mid-connection (its runtime shut
        // down): they may or may not have arrived.
        for (ack, len) in std::mem::take(&mut self.unconfirmed) {
            self.shared.fail(ack, len, SendError::ConnectionLost);
        }
        for pending in self.batch.drain(..).chain(queued) {
            self.shared.drop_pending(pending, error.clone());
        }
        self.shared.deliver(&mut self.incoming);
        self.shared.close_inbox();
        match &event {
            WsEvent::Failed { attempts } => {
                tracing::error!(attempts, "ws: giving up; out of connection attempts");
            }
            _ => tracing::info!("ws: closed"),
        }
        self.shared.emit(event);
        self.set_status(status);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The task was dropped before it finished (its runtime shut down): end the client so
        // that nobody waits for it.
        if !self.finished {
            self.finish(End::Closed { clean: false });
        }
    }
}

/// Runs `future` unless a close is requested first (`None` then).
async fn until_close<F: Future>(shared: &Shared, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    poll_fn(|cx| {
        shared.driver.register(cx.waker());
        if shared.close_requested() {
            return Poll::Ready(None);
        }
        future.as_mut().poll(cx).map(Some)
    })
    .await
}

fn classify_connect_error(error: &WsError) -> ConnectFailure {
    match error {
        WsError::Http(response) => ConnectFailure::Rejected {
            status: response.status().as_u16(),
        },
        WsError::Io(_) | WsError::Tls(_) => ConnectFailure::Io,
        WsError::Url(_) | WsError::HttpFormat(_) => ConnectFailure::Endpoint,
        _ => ConnectFailure::Protocol,
    }
}
