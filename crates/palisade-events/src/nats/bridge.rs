//! [`NatsBridge`]: one connection between a bus and a NATS server; [`Bridge`]: one event
//! type carried over it.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use palisade_core::reject::Overloaded;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::config::NatsConfig;
use super::connection::{self, Control, Counters, Delivery, Outgoing, Shared};
use super::error::NatsError;
use super::proto;
use crate::bus::EventBus;
use crate::event::Event;
use crate::observe::BusEvent;

/// A connection between an [`EventBus`] and a NATS server, which carries chosen event types
/// between processes. Cheap to clone: every clone shares the connection.
///
/// [`bridge::<E>()`](Self::bridge) brings events of type `E` published by any process
/// (this one included) into the local bus, where `bus.on::<E>(..)` handlers get them like
/// locally published events; [`publish`](Self::publish) sends an event to every process
/// bridging its type. See the [module docs](super) for what is reported when.
///
/// The connection lives in a task on the tokio runtime that called
/// [`connect`](Self::connect); it closes when the last clone and the last [`Bridge`] are
/// dropped (sending what is still queued first).
#[derive(Clone)]
pub struct NatsBridge {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    data: mpsc::Sender<Outgoing>,
    control: mpsc::UnboundedSender<Control>,
}

impl NatsBridge {
    /// Connects `bus` to the NATS server of `config`, and starts the connection task on the
    /// current tokio runtime.
    ///
    /// The first connection must succeed; after that the bridge reconnects by itself (see
    /// [`NatsConfig::reconnect`]).
    ///
    /// # Errors
    ///
    /// [`NatsError::Connect`], [`NatsError::TimedOut`], [`NatsError::Refused`] or
    /// [`NatsError::Protocol`] when the first connection fails.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the connection task).
    pub async fn connect(bus: &EventBus, config: NatsConfig) -> Result<Self, NatsError> {
        let shared = Arc::new(Shared::new(config, bus.clone()));
        let conn = connection::open(&shared).await?;
        let (data, data_rx) = mpsc::channel(shared.config.send_capacity.get());
        let (control, control_rx) = mpsc::unbounded_channel();
        tokio::spawn(connection::run(
            Arc::clone(&shared),
            conn,
            data_rx,
            control_rx,
        ));
        tracing::debug!(server = %shared.config.server, "NATS bridge connected");
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                data,
                control,
            }),
        })
    }

    /// Subscribes to events of type `E` on NATS: from now until the returned [`Bridge`] is
    /// dropped, every `E` published to NATS (by any process, this one included) is decoded
    /// and [published](EventBus::publish) on the local bus. Resolves once the server has
    /// confirmed the subscription, so events published after that are received.
    ///
    /// Events that cannot be decoded are reported (see [`Malformed`]); events the bus
    /// refuses (a full queue with [`WhenFull::Reject`](crate::WhenFull)) are counted as
    /// [`undelivered`](NatsStats::undelivered). Handler failures go to the bus's dead
    /// letters like those of any published event.
    ///
    /// # Errors
    ///
    /// [`NatsError::InvalidSubject`] when the prefix and `E::NAME` do not make a valid
    /// subject; [`NatsError::Closed`] when the bridge has stopped.
    pub async fn bridge<E>(&self) -> Result<Bridge<E>, NatsError>
    where
        E: Event + DeserializeOwned,
    {
        let subject = self.subject::<E>()?;
        let shared = &self.handle.shared;
        let sid = shared.next_sid.fetch_add(1, Ordering::Relaxed);
        let (done, confirmed) = oneshot::channel();
        self.handle
            .control
            .send(Control::Subscribe {
                sid,
                subject: subject.clone(),
                delivery: Arc::new(Typed::<E>(PhantomData)),
                done,
            })
            .map_err(|_| NatsError::Closed)?;
        // Made before waiting: if this future is dropped, so is the subscription.
        let bridge = Bridge {
            nats: self.clone(),
            sid,
            subject,
            detached: false,
            _event: PhantomData,
        };
        confirmed.await.map_err(|_| NatsError::Closed)?;
        Ok(bridge)
    }

    /// Sends `event` to NATS, on `<prefix>.<E::NAME>`, for every process that bridges `E`
    /// (this one too, if it does). Waits while the send queue is full (also while the
    /// bridge reconnects: queued events are sent once it is back).
    ///
    /// NATS delivers at most once: an event handed to the connection just before it broke
    /// may be lost; the loss is counted ([`NatsStats::unsent`]) and the receivers report
    /// their gap. Call [`flush`](Self::flush) to know that the server has everything.
    ///
    /// # Errors
    ///
    /// [`NatsError::Serialize`], [`NatsError::TooLarge`] (over the server's
    /// `max_payload`), [`NatsError::InvalidSubject`], or [`NatsError::Closed`] when the
    /// bridge has stopped.
    pub async fn publish<E>(&self, event: &E) -> Result<(), NatsError>
    where
        E: Event + Serialize,
    {
        let outgoing = self.encode(event)?;
        self.handle
            .data
            .send(outgoing)
            .await
            .map_err(|_| NatsError::Closed)
    }

    /// Like [`publish`](Self::publish), without waiting for room in the send queue.
    ///
    /// # Errors
    ///
    /// [`NatsError::QueueFull`] when the queue is full, and the errors of `publish`.
    pub fn try_publish<E>(&self, event: &E) -> Result<(), NatsError>
    where
        E: Event + Serialize,
    {
        let outgoing = self.encode(event)?;
        self.handle
            .data
            .try_send(outgoing)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => NatsError::QueueFull {
                    event: E::NAME,
                    capacity: self.handle.shared.config.send_capacity.get(),
                    overloaded: Overloaded::new(),
                },
                mpsc::error::TrySendError::Closed(_) => NatsError::Closed,
            })
    }

    /// Waits until the server has received everything published before this call (a
    /// `PING` answered by a `PONG` behind it).
    ///
    /// # Errors
    ///
    /// [`NatsError::Disconnected`] when the connection broke first: what was sent may not
    /// have arrived. [`NatsError::Closed`] when the bridge has stopped.
    pub async fn flush(&self) -> Result<(), NatsError> {
        let (done, flushed) = oneshot::channel();
        self.handle
            .data
            .send(Outgoing::Flush(done))
            .await
            .map_err(|_| NatsError::Closed)?;
        flushed.await.map_err(|_| NatsError::Closed)?
    }

    /// The subject events of type `E` travel on: `<prefix>.<E::NAME>`.
    ///
    /// # Errors
    ///
    /// [`NatsError::InvalidSubject`] when that is not a valid subject (an event name with
    /// spaces or wildcards).
    pub fn subject<E: Event>(&self) -> Result<String, NatsError> {
        let subject = format!("{}.{}", self.handle.shared.config.prefix, E::NAME);
        if proto::is_valid_subject(&subject) {
            Ok(subject)
        } else {
            Err(NatsError::InvalidSubject { subject })
        }
    }

    /// Whether the bridge is connected now (it may be reconnecting).
    pub fn is_connected(&self) -> bool {
        self.handle.shared.connected.load(Ordering::Acquire)
    }

    /// What the bridge has counted so far.
    pub fn stats(&self) -> NatsStats {
        let counters = &self.handle.shared.counters;
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        NatsStats {
            sent: read(&counters.sent),
            unsent: read(&counters.unsent),
            received: read(&counters.received),
            malformed: read(&counters.malformed),
            undelivered: read(&counters.undelivered),
            reconnects: read(&counters.reconnects),
            gaps: read(&counters.gaps),
        }
    }

    /// The configuration the bridge was made with.
    pub fn config(&self) -> &NatsConfig {
        &self.handle.shared.config
    }

    fn encode<E: Event + Serialize>(&self, event: &E) -> Result<Outgoing, NatsError> {
        let subject = self.subject::<E>()?;
        let payload = serde_json::to_vec(event).map_err(|source| NatsError::Serialize {
            event: E::NAME,
            source,
        })?;
        let max = self.handle.shared.max_payload.load(Ordering::Relaxed);
        if payload.len() > max {
            return Err(NatsError::TooLarge {
                event: E::NAME,
                size: payload.len(),
                max,
            });
        }
        Ok(Outgoing::Publish { subject, payload })
    }
}

impl fmt::Debug for NatsBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBridge")
            .field("server", &self.handle.shared.config.server)
            .field("connected", &self.is_connected())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Events of type `E` carried between NATS and the local bus, from
/// [`NatsBridge::bridge`]. Dropping it unsubscribes (see [`detach`](Self::detach)).
#[must_use = "dropping a Bridge unsubscribes it at once"]
pub struct Bridge<E> {
    nats: NatsBridge,
    sid: u64,
    subject: String,
    detached: bool,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event> Bridge<E> {
    /// The subject: `<prefix>.<E::NAME>`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The connection it uses.
    pub fn nats(&self) -> &NatsBridge {
        &self.nats
    }

    /// Stops bringing `E`s into the bus (the same as dropping it).
    pub fn unsubscribe(self) {}

    /// Keeps the subscription for as long as the connection lives, without keeping this
    /// handle.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl<E: Event + Serialize> Bridge<E> {
    /// [`NatsBridge::publish`] for this event type.
    ///
    /// # Errors
    ///
    /// As for [`NatsBridge::publish`].
    pub async fn publish(&self, event: &E) -> Result<(), NatsError> {
        self.nats.publish(event).await
    }
}

impl<E> Drop for Bridge<E> {
    fn drop(&mut self) {
        if !self.detached {
            // Fails only when the connection task is gone, and the subscription with it.
            let _ = self
                .nats
                .handle
                .control
                .send(Control::Unsubscribe { sid: self.sid });
        }
    }
}

impl<E> fmt::Debug for Bridge<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("subject", &self.subject)
            .field("detached", &self.detached)
            .finish_non_exhaustive()
    }
}

/// What a [`NatsBridge`] has counted since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsStats {
    /// Events written to the connection.
    pub sent: u64,
    /// Events handed to a connection that broke before they were written: lost.
    pub unsent: u64,
    /// Events received and decoded.
    pub received: u64,
    /// Messages whose payload could not be decoded into their event type.
    pub malformed: u64,
    /// Decoded events the bus refused (its queue full with `WhenFull::Reject`, or its
    /// dispatcher stopped).
    pub undelivered: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Reported windows in which messages may have been missed.
    pub gaps: u64,
}

/// A message whose payload could not be decoded into its event type; passed to
/// [`NatsConfig::on_malformed`].
pub struct Malformed {
    event: &'static str,
    subject: String,
    payload: Vec<u8>,
    error: serde_json::Error,
}

impl Malformed {
    /// The event type's [`NAME`](Event::NAME).
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// The subject it came on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The payload as received.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Why it could not be decoded.
    pub fn error(&self) -> &serde_json::Error {
        &self.error
    }
}

impl fmt::Debug for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Malformed")
            .field("event", &self.event)
            .field("subject", &self.subject)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .field("error", &self.error)
            .finish()
    }
}

/// Decodes `E`s and publishes them on the bus.
struct Typed<E>(PhantomData<fn() -> E>);

impl<E: Event + DeserializeOwned> Delivery for Typed<E> {
    fn event(&self) -> &'static str {
        E::NAME
    }

    fn deliver<'a>(
        &'a self,
        shared: &'a Shared,
        subject: &'a str,
        payload: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match serde_json::from_slice::<E>(payload) {
                Ok(event) => {
                    Counters::add(&shared.counters.received, 1);
                    // The bus reports a refusal to its listener and the logs itself.
                    if shared.bus.publish(event).await.is_err() {
                        Counters::add(&shared.counters.undelivered, 1);
                    }
                }
                Err(error) => malformed(shared, E::NAME, subject, payload, error),
            }
        })
    }
}

fn malformed(
    shared: &Shared,
    event: &'static str,
    subject: &str,
    payload: &[u8],
    error: serde_json::Error,
) {
    Counters::add(&shared.counters.malformed, 1);
    tracing::warn!(
        event,
        subject,
        bytes = payload.len(),
        %error,
        "a NATS message could not be decoded; it was not delivered"
    );
    let reason: Arc<str> = error.to_string().into();
    shared.report(|| BusEvent::RemoteMalformed {
        event,
        error: reason,
    });
    if let Some(callback) = &shared.config.on_malformed {
        let letter = Malformed {
            event,
            subject: subject.to_owned(),
            payload: payload.to_vec(),
            error,
        };
        if catch_unwind(AssertUnwindSafe(|| callback(letter))).is_err() {
            tracing::error!("the on_malformed callback panicked");
        }
    }
}
