//! The connection task: one TCP connection to the server, kept open across failures.
//!
//! The task owns the socket and the table of subscriptions. Per session (one TCP
//! connection) it subscribes everything in the table, then loops over four sources at once:
//! bytes from the server (messages, pings, pongs), room in the socket for what it has to
//! send, subscription changes, and events to publish. When the connection breaks it reports
//! the loss, reconnects with the configured backoff, subscribes again, and once the server
//! has confirmed the new subscriptions reports the window in which messages may have been
//! missed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use super::config::{Auth, NatsConfig};
use super::error::NatsError;
use super::proto::{self, ServerOp};
use crate::bus::EventBus;
use crate::observe::BusEvent;

/// A server's `max_payload` until its `INFO` says otherwise: the NATS default, 1 MiB.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Above this many bytes waiting for the socket, no more events are taken from the queue.
const HIGH_WATER: usize = 64 * 1024;
/// How many bytes one read asks for at least.
const READ_CHUNK: usize = 16 * 1024;

/// What the bridge handles and the task share.
pub(crate) struct Shared {
    pub(crate) config: NatsConfig,
    pub(crate) bus: EventBus,
    pub(crate) max_payload: AtomicUsize,
    pub(crate) connected: AtomicBool,
    pub(crate) next_sid: AtomicU64,
    pub(crate) counters: Counters,
}

/// What [`NatsStats`](super::NatsStats) reads.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) unsent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) undelivered: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) gaps: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Shared {
    pub(crate) fn new(config: NatsConfig, bus: EventBus) -> Self {
        Self {
            config,
            bus,
            max_payload: AtomicUsize::new(DEFAULT_MAX_PAYLOAD),
            connected: AtomicBool::new(false),
            next_sid: AtomicU64::new(1),
            counters: Counters::default(),
        }
    }

    pub(crate) fn report(&self, event: impl FnOnce() -> BusEvent) {
        self.bus.inner().config.report(event);
    }

    fn server(&self) -> String {
        self.config.server.to_string()
    }
}

/// Delivers the payloads of one subscription: decodes them into the event type and
/// publishes them on the bus.
pub(crate) trait Delivery: Send + Sync {
    fn event(&self) -> &'static str;
    fn deliver<'a>(
        &'a self,
        shared: &'a Shared,
        subject: &'a str,
        payload: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// Something to send, in order.
pub(crate) enum Outgoing {
    Publish { subject: String, payload: Vec<u8> },
    Flush(oneshot::Sender<Result<(), NatsError>>),
}

/// A change to the subscriptions.
pub(crate) enum Control {
    Subscribe {
        sid: u64,
        subject: String,
        delivery: Arc<dyn Delivery>,
        done: oneshot::Sender<()>,
    },
    Unsubscribe {
        sid: u64,
    },
}

struct Sub {
    subject: String,
    delivery: Arc<dyn Delivery>,
}

/// Who waits for the next `PONG`: the server answers pings in order.
enum Waiter {
    Keepalive,
    Flush(oneshot::Sender<Result<(), NatsError>>),
    /// The subscriptions sent at the start of a session (and those made while
    /// disconnected, waiting in `confirm`) are in place.
    Resubscribed(Vec<oneshot::Sender<()>>),
    Subscribed(oneshot::Sender<()>),
}

/// An open connection, handshake done.
pub(crate) struct Conn {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    /// Bytes read and not yet parsed.
    rbuf: Vec<u8>,
}

/// Connects to the server and does the handshake: `INFO`, `CONNECT`, `PING`, `PONG`.
pub(crate) async fn open(shared: &Shared) -> Result<Conn, NatsError> {
    let config = &shared.config;
    let timeout = config.connect_timeout;
    match tokio::time::timeout(timeout, handshake(shared)).await {
        Ok(result) => result,
        Err(_) => Err(NatsError::TimedOut {
            server: shared.server(),
            timeout,
        }),
    }
}

async fn handshake(shared: &Shared) -> Result<Conn, NatsError> {
    let config = &shared.config;
    let server = &config.server;
    let stream = TcpStream::connect((server.host.as_str(), server.port))
        .await
        .map_err(|source| NatsError::Connect {
            server: shared.server(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut conn = Conn {
        reader,
        writer,
        rbuf: Vec::with_capacity(READ_CHUNK),
    };
    let protocol = |reason: String| NatsError::Protocol {
        server: shared.server(),
        reason,
    };

    let mut connect_sent = false;
    loop {
        let parsed = proto::parse(&conn.rbuf).map_err(|error| protocol(error.0))?;
        let Some((op, used)) = parsed else {
            let n = read_more(&mut conn.reader, &mut conn.rbuf)
                .await
                .map_err(|error| protocol(format!("reading: {error}")))?;
            if n == 0 {
                return Err(protocol("the server closed the connection".into()));
            }
            continue;
        };
        let mut reply = Vec::new();
        let done = match op {
            ServerOp::Info(info) => {
                shared.update_info(info);
                if !connect_sent {
                    connect_sent = true;
                    reply = connect_line(config);
                    reply.extend_from_slice(proto::PING);
                }
                false
            }
            ServerOp::Pong if connect_sent => true,
            ServerOp::Ping => {
                reply.extend_from_slice(proto::PONG);
                false
            }
            ServerOp::Ok => false,
            ServerOp::Err(message) => {
                return Err(NatsError::Refused {
                    server: shared.server(),
                    message: message.to_owned(),
                });
            }
            ServerOp::Pong | ServerOp::Msg { .. } => {
                return Err(protocol("unexpected operation in the handshake".into()));
            }
        };
        conn.rbuf.drain(..used);
        if !reply.is_empty() {
            conn.writer
                .write_all(&reply)
                .await
                .map_err(|error| protocol(format!("writing: {error}")))?;
        }
        if done {
            return Ok(conn);
        }
    }
}

/// `CONNECT {...}\r\n`: no echo suppression (a process receives what it publishes, like
/// every other subscriber), no verbose `+OK`s, no headers.
fn connect_line(config: &NatsConfig) -> Vec<u8> {
    let mut options = json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "name": &*config.name,
        "protocol": 1,
        "echo": true,
        "headers": false,
        "no_responders": false,
    });
    match &config.server.auth {
        Auth::None => {}
        Auth::Token(token) => options["auth_token"] = json!(token),
        Auth::User { user, pass } => {
            options["user"] = json!(user);
            options["pass"] = json!(pass);
        }
    }
    let mut line = b"CONNECT ".to_vec();
    line.extend_from_slice(options.to_string().as_bytes());
    line.extend_from_slice(b"\r\n");
    line
}

impl Shared {
    fn update_info(&self, info: &[u8]) {
        let max = serde_json::from_slice::<serde_json::Value>(info)
            .ok()
            .and_then(|info| info.get("max_payload")?.as_u64())
            .and_then(|max| usize::try_from(max).ok());
        if let Some(max) = max {
            self.max_payload.store(max, Ordering::Relaxed);
        }
    }
}

async fn read_more(reader: &mut OwnedReadHalf, rbuf: &mut Vec<u8>) -> std::io::Result<usize> {
    rbuf.reserve(READ_CHUNK);
    reader.read_buf(rbuf).await
}

/// How a session ended.
enum End {
    /// Every handle to the bridge is gone: stop.
    Closed,
    /// The connection broke.
    Lost(String),
}

/// The task's state that outlives a session.
struct Task {
    shared: Arc<Shared>,
    data: mpsc::Receiver<Outgoing>,
    control: mpsc::UnboundedReceiver<Control>,
    control_open: bool,
    subs: HashMap<u64, Sub>,
    /// Subscriptions made while disconnected, confirmed with the next resubscription.
    confirm: Vec<oneshot::Sender<()>>,
    /// Since when messages may have been missed, and of which events: set when a
    /// connection with subscriptions is lost, cleared when the server has confirmed them
    /// on a new one.
    gap: Option<(Instant, Vec<&'static str>)>,
}

/// Runs the bridge's connection until every handle is dropped or the reconnect backoff
/// gives up.
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: Conn,
    data: mpsc::Receiver<Outgoing>,
    control: mpsc::UnboundedReceiver<Control>,
) {
    let mut task = Task {
        shared,
        data,
        control,
        control_open: true,
        subs: HashMap::new(),
        confirm: Vec::new(),
        gap: None,
    };
    let mut conn = conn;
    loop {
        task.shared.connected.store(true, Ordering::Release);
        let end = task.session(&mut conn).await;
        task.shared.connected.store(false, Ordering::Release);
        match end {
            End::Closed => break,
            End::Lost(_) => match task.reconnect().await {
                Some(next) => conn = next,
                None => break,
            },
        }
    }
    tracing::debug!(server = %task.shared.config.server, "NATS bridge stopped");
}

impl Task {
    fn apply(&mut self, control: Control, wbuf: Option<&mut Vec<u8>>) -> Option<Waiter> {
        match control {
            Control::Subscribe {
                sid,
                subject,
                delivery,
                done,
            } => {
                tracing::debug!(%subject, sid, event = delivery.event(), "NATS subscribe");
                let waiter = match wbuf {
                    Some(wbuf) => {
                        proto::write_sub(wbuf, &subject, sid);
                        wbuf.extend_from_slice(proto::PING);
                        Some(Waiter::Subscribed(done))
                    }
                    None => {
                        self.confirm.push(done);
                        None
                    }
                };
                self.subs.insert(sid, Sub { subject, delivery });
                waiter
            }
            Control::Unsubscribe { sid } => {
                if self.subs.remove(&sid).is_some()
                    && let Some(wbuf) = wbuf
                {
                    proto::write_unsub(wbuf, sid);
                }
                None
            }
        }
    }

    /// One connection's life.
    async fn session(&mut self, conn: &mut Conn) -> End {
        let shared = Arc::clone(&self.shared);
        let Conn {
            reader,
            writer,
            rbuf,
        } = conn;
        let mut wbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        // Absolute end offsets of the PUBs in `wbuf`, and how much has been written.
        let mut pub_ends: VecDeque<u64> = VecDeque::new();
        let (mut queued, mut written) = (0_u64, 0_u64);
        let mut waiters: VecDeque<Waiter> = VecDeque::new();

        // Subscribe everything again; the PONG confirms it.
        for (sid, sub) in &self.subs {
            proto::write_sub(&mut wbuf, &sub.subject, *sid);
        }
        wbuf.extend_from_slice(proto::PING);
        queued += wbuf.len() as u64;
        waiters.push_back(Waiter::Resubscribed(std::mem::take(&mut self.confirm)));

        let interval = shared.config.ping_interval;
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();

        let end = loop {
            let room = wbuf.len() < HIGH_WATER;
            tokio::select! {
                biased;
                control = self.control.recv(), if self.control_open => match control {
                    Some(control) => {
                        let before = wbuf.len();
                        if let Some(waiter) = self.apply(control, Some(&mut wbuf)) {
                            waiters.push_back(waiter);
                        }
                        queued += (wbuf.len() - before) as u64;
                    }
                    None => self.control_open = false,
                },
                read = read_more(reader, rbuf) => {
                    match read {
                        Ok(0) => break End::Lost("the server closed the connection".into()),
                        Ok(_) => last_heard = Instant::now(),
                        Err(error) => break End::Lost(format!("reading: {error}")),
                    }
                    let before = wbuf.len();
                    let handled = self.handle_input(rbuf, &mut wbuf, &mut waiters).await;
                    queued += (wbuf.len() - before) as u64;
                    if let Err(reason) = handled {
                        break End::Lost(reason);
                    }
                }
                wrote = writer.write(&wbuf), if !wbuf.is_empty() => match wrote {
                    Ok(0) => break End::Lost("the socket accepts no more data".into()),
                    Ok(n) => {
                        wbuf.drain(..n);
                        written += n as u64;
                        let mut sent = 0;
                        while pub_ends.front().is_some_and(|end| *end <= written) {
                            pub_ends.pop_front();
                            sent += 1;
                        }
                        Counters::add(&shared.counters.sent, sent);
                    }
                    Err(error) => break End::Lost(format!("writing: {error}")),
                },
                outgoing = self.data.recv(), if room => match outgoing {
                    Some(Outgoing::Publish { subject, payload }) => {
                        let before = wbuf.len();
                        proto::write_pub(&mut wbuf, &subject, &payload);
                        queued += (wbuf.len() - before) as u64;
                        pub_ends.push_back(queued);
                    }
                    Some(Outgoing::Flush(done)) => {
                        wbuf.extend_from_slice(proto::PING);
                        queued += proto::PING.len() as u64;
                        waiters.push_back(Waiter::Flush(done));
                    }
                    None => break End::Closed,
                },
                _ = ticks.tick() => {
                    let silent = last_heard.elapsed();
                    if silent >= interval * 2 {
                        break End::Lost(format!("no answer from the server for {silent:?}"));
                    }
                    if silent >= interval {
                        wbuf.extend_from_slice(proto::PING);
                        queued += proto::PING.len() as u64;
                        waiters.push_back(Waiter::Keepalive);
                    }
                }
            }
        };

        match &end {
            End::Closed => {
                // Send what is left (best effort) and say goodbye.
                let _ = writer.write_all(&wbuf).await;
                Counters::add(&shared.counters.sent, pub_ends.len() as u64);
                let _ = writer.shutdown().await;
            }
            End::Lost(reason) => self.lost(reason, last_heard, pub_ends.len(), waiters),
        }
        rbuf.clear();
        end
    }

    /// Parses and handles every complete operation in `rbuf`.
    async fn handle_input(
        &mut self,
        rbuf: &mut Vec<u8>,
        wbuf: &mut Vec<u8>,
        waiters: &mut VecDeque<Waiter>,
    ) -> Result<(), String> {
        let mut at = 0;
        let result = loop {
            let (op, used) = match proto::parse(&rbuf[at..]) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break Ok(()),
                Err(error) => break Err(error.to_string()),
            };
            match op {
                ServerOp::Msg {
                    subject,
                    sid,
                    payload,
                } => match self.subs.get(&sid) {
                    Some(sub) => {
                        let delivery = Arc::clone(&sub.delivery);
                        delivery.deliver(&self.shared, subject, payload).await;
                    }
                    // Unsubscribed a moment ago: the server had sent it already.
                    None => tracing::debug!(subject, sid, "NATS message for an ended subscription"),
                },
                ServerOp::Ping => wbuf.extend_from_slice(proto::PONG),
                ServerOp::Pong => match waiters.pop_front() {
                    Some(waiter) => self.answered(waiter),
                    None => tracing::debug!("unexpected PONG from the NATS server"),
                },
                ServerOp::Ok => {}
                ServerOp::Err(message) => {
                    tracing::warn!(server = %self.shared.config.server, message, "the NATS server reported an error");
                }
                ServerOp::Info(info) => self.shared.update_info(info),
            }
            at += used;
        };
        rbuf.drain(..at);
        result
    }

    /// A `PONG` arrived for `waiter`.
    fn answered(&mut self, waiter: Waiter) {
        match waiter {
            Waiter::Keepalive => {}
            Waiter::Flush(done) => {
                let _ = done.send(Ok(()));
            }
            Waiter::Subscribed(done) => {
                let _ = done.send(());
            }
            Waiter::Resubscribed(confirm) => {
                for done in confirm {
                    let _ = done.send(());
                }
                if let Some((since, events)) = self.gap.take() {
                    let gap = since.elapsed();
                    Counters::add(&self.shared.counters.gaps, 1);
                    tracing::warn!(
                        server = %self.shared.config.server,
                        ?gap,
                        events = ?events,
                        "NATS subscriptions restored: events published during the gap may have been missed"
                    );
                    let events: Arc<[&'static str]> = events.into();
                    self.shared.report(|| BusEvent::RemoteGap { gap, events });
                }
            }
        }
    }

    /// The connection broke: fail flushes, keep subscription confirmations for the next
    /// session, open the gap, report.
    fn lost(
        &mut self,
        reason: &str,
        last_heard: Instant,
        unsent: usize,
        waiters: VecDeque<Waiter>,
    ) {
        self.shared.connected.store(false, Ordering::Release);
        for waiter in waiters {
            match waiter {
                Waiter::Keepalive => {}
                Waiter::Flush(done) => {
                    let _ = done.send(Err(NatsError::Disconnected));
                }
                Waiter::Subscribed(done) => self.confirm.push(done),
                Waiter::Resubscribed(confirm) => self.confirm.extend(confirm),
            }
        }
        if self.gap.is_none() && !self.subs.is_empty() {
            let mut events: Vec<&'static str> =
                self.subs.values().map(|sub| sub.delivery.event()).collect();
            events.sort_unstable();
            events.dedup();
            self.gap = Some((last_heard, events));
        }
        Counters::add(&self.shared.counters.unsent, unsent as u64);
        let server = self.shared.server();
        tracing::warn!(%server, reason, unsent, "NATS connection lost; reconnecting");
        let reason: Arc<str> = reason.into();
        self.shared.report(|| BusEvent::RemoteDisconnected {
            server: server.into(),
            reason,
            unsent,
        });
    }

    /// Reconnects with the configured backoff, keeping track of subscription changes
    /// meanwhile. `None` when the backoff gives up or every handle is gone.
    async fn reconnect(&mut self) -> Option<Conn> {
        let shared = Arc::clone(&self.shared);
        let lost_at = Instant::now();
        let mut delays = shared.config.reconnect.delays();
        let mut attempts = 0_u32;
        loop {
            let Some(delay) = delays.next_after(lost_at.elapsed()) else {
                tracing::error!(
                    server = %shared.config.server,
                    attempts,
                    "NATS reconnect backoff exhausted; the bridge stops"
                );
                return None;
            };
            let mut sleep = pin!(tokio::time::sleep(delay));
            loop {
                tokio::select! {
                    biased;
                    control = self.control.recv(), if self.control_open => match control {
                        Some(control) => {
                            self.apply(control, None);
                        }
                        None => self.control_open = false,
                    },
                    () = &mut sleep => break,
                }
            }
            if self.data.is_closed() && self.data.is_empty() {
                return None;
            }
            attempts += 1;
            match open(&shared).await {
                Ok(conn) => {
                    let downtime = lost_at.elapsed();
                    Counters::add(&shared.counters.reconnects, 1);
                    tracing::info!(server = %shared.config.server, attempts, ?downtime, "NATS reconnected");
                    shared.report(|| BusEvent::RemoteReconnected { downtime });
                    return Some(conn);
                }
                Err(error) => {
                    tracing::debug!(server = %shared.config.server, attempts, %error, "NATS reconnect failed");
                }
            }
        }
    }
}
