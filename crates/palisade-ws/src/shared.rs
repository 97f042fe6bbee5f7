//! State shared by the handles, the message stream and the driver task: the send buffer, the
//! receive buffer, the status, the counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use futures_util::task::AtomicWaker;
use palisade_core::event::Listener;
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message as WireMessage;

use crate::config::BufferLimits;
use crate::config::OverflowPolicy;
use crate::error::SendError;
use crate::event::WsEvent;
use crate::handle::SendFuture;
use crate::message::Message;
use crate::status::Status;

/// Resolves a message's [`SendFuture`].
pub(crate) type Ack = oneshot::Sender<Result<(), SendError>>;

/// A message waiting to be written.
pub(crate) struct Pending {
    pub(crate) message: WireMessage,
    pub(crate) len: usize,
    /// `None` for the on-connect hook's messages, which have no future and are made again
    /// on the next connection rather than kept.
    pub(crate) ack: Option<Ack>,
}

/// The send buffer: messages accepted and not yet handed to the socket.
pub(crate) struct Outbox {
    pub(crate) queue: VecDeque<Pending>,
    pub(crate) bytes: usize,
    /// Whether a connection is up (messages queued now are not "buffered while down").
    pub(crate) connected: bool,
    /// Set once the client closes or fails: new messages fail at once with it.
    pub(crate) closed: Option<SendError>,
}

/// The receive buffer: messages read and not yet taken by the application.
pub(crate) struct Inbox {
    pub(crate) queue: VecDeque<Message>,
    /// The driver is done: no more messages will come.
    pub(crate) closed: bool,
    /// The application dropped its `Messages`: received messages are discarded.
    pub(crate) receiver_gone: bool,
    pub(crate) receiver: Option<Waker>,
    /// The driver stopped reading for lack of room and waits to be woken.
    pub(crate) driver_waiting: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connects: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) dead_peers: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) outbox: Mutex<Outbox>,
    pub(crate) inbox: Mutex<Inbox>,
    pub(crate) limits: BufferLimits,
    pub(crate) receive_capacity: usize,
    /// The driver task's waker: new messages while connected, room in the receive buffer,
    /// a close request.
    pub(crate) driver: AtomicWaker,
    close: AtomicBool,
    pub(crate) close_timed_out: AtomicBool,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) counters: Counters,
    pub(crate) listener: Arc<dyn Listener<WsEvent>>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks can panic halfway through an update; a poisoned lock's data
    // is as consistent as any other.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(
        limits: BufferLimits,
        receive_capacity: usize,
        listener: Arc<dyn Listener<WsEvent>>,
    ) -> Self {
        Self {
            outbox: Mutex::new(Outbox {
                queue: VecDeque::new(),
                bytes: 0,
                connected: false,
                closed: None,
            }),
            inbox: Mutex::new(Inbox {
                queue: VecDeque::new(),
                closed: false,
                receiver_gone: false,
                receiver: None,
                driver_waiting: false,
            }),
            limits,
            receive_capacity,
            driver: AtomicWaker::new(),
            close: AtomicBool::new(false),
            close_timed_out: AtomicBool::new(false),
            status: watch::Sender::new(Status::Connecting { attempt: 1 }),
            counters: Counters::default(),
            listener,
        }
    }

    pub(crate) fn emit(&self, event: WsEvent) {
        self.listener.on_event(&event);
    }

    pub(crate) fn close_requested(&self) -> bool {
        self.close.load(Ordering::Acquire)
    }

    /// Refuses new messages and asks the driver to close.
    pub(crate) fn request_close(&self) {
        lock(&self.outbox).closed.get_or_insert(SendError::Closed);
        self.close.store(true, Ordering::Release);
        self.driver.wake();
    }

    /// Queues `message` under the buffer's limits and policy.
    pub(crate) fn send(&self, message: Message) -> SendFuture {
        let len = message.len();
        let limits = self.limits;
        if len > limits.bytes.get() {
            return self.reject(
                SendError::TooLarge {
                    len,
                    limit: limits.bytes.get(),
                },
                len,
            );
        }
        // Evictions are reported after the lock is released; no allocation unless one happens.
        let mut evicted: Vec<Pending> = Vec::new();
        let (future, wake, buffered) = {
            let mut outbox = lock(&self.outbox);
            if let Some(error) = &outbox.closed {
                let error = error.clone();
                drop(outbox);
                return self.reject(error, len);
            }
            while outbox.queue.len() >= limits.messages.get()
                || outbox.bytes + len > limits.bytes.get()
            {
                let victim = match limits.policy {
                    OverflowPolicy::RejectNew => {
                        drop(outbox);
                        return self.reject(SendError::BufferFull, len);
                    }
                    OverflowPolicy::DropOldest => outbox.queue.pop_front(),
                    OverflowPolicy::DropNewest => outbox.queue.pop_back(),
                };
                // The queue cannot be empty here: an empty queue has room for a message
                // within the byte limit.
                let Some(victim) = victim else { break };
                outbox.bytes -= victim.len;
                evicted.push(victim);
            }
            let (ack, future) = SendFuture::channel();
            let wake = outbox.connected && outbox.queue.is_empty();
            outbox.bytes += len;
            outbox.queue.push_back(Pending {
                message: message.into_wire(),
                len,
                ack: Some(ack),
            });
            let buffered = (!outbox.connected).then_some(outbox.queue.len());
            (future, wake, buffered)
        };
        for victim in evicted {
            self.drop_pending(victim, SendError::Evicted);
        }
        if wake {
            self.driver.wake();
        }
        if let Some(queued) = buffered {
            tracing::trace!(queued, "ws: message buffered while disconnected");
            self.emit(WsEvent::Buffered { queued });
        }
        future
    }

    fn reject(&self, error: SendError, len: usize) -> SendFuture {
        self.report_drop(&error, len);
        SendFuture::ready(Err(error))
    }

    /// Fails a message's future with `error` and reports it. The hook's messages have no
    /// future and are made again on the next connection: they are let go silently.
    pub(crate) fn drop_pending(&self, pending: Pending, error: SendError) {
        self.fail(pending.ack, pending.len, error);
    }

    /// Fails one message's future with `error` and reports it; see [`Self::drop_pending`].
    pub(crate) fn fail(&self, ack: Option<Ack>, len: usize, error: SendError) {
        if let Some(ack) = ack {
            self.report_drop(&error, len);
            // The caller may have dropped its future; the drop is counted either way.
            let _ = ack.send(Err(error));
        }
    }

    pub(crate) fn report_drop(&self, error: &SendError, len: usize) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %error, len, "ws: message dropped");
        self.emit(WsEvent::Dropped {
            error: error.clone(),
            len,
        });
    }

    /// Moves `incoming` into the receive buffer and wakes the application; returns how many
    /// more messages fit (and, when none, marks the driver as waiting for room).
    pub(crate) fn deliver(&self, incoming: &mut VecDeque<Message>) -> usize {
        let count = incoming.len() as u64;
        let (room, waker) = {
            let mut inbox = lock(&self.inbox);
            if inbox.receiver_gone {
                incoming.clear();
                return usize::MAX;
            }
            if inbox.queue.is_empty() {
                std::mem::swap(&mut inbox.queue, incoming);
            } else {
                inbox.queue.append(incoming);
            }
            let room = self.receive_capacity.saturating_sub(inbox.queue.len());
            if room == 0 {
                inbox.driver_waiting = true;
            }
            let waker = if inbox.queue.is_empty() {
                None
            } else {
                inbox.receiver.take()
            };
            (room, waker)
        };
        if count > 0 {
            self.counters.received.fetch_add(count, Ordering::Relaxed);
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        room
    }

    /// No more messages will come: the stream ends once the buffer is drained.
    pub(crate) fn close_inbox(&self) {
        let waker = {
            let mut inbox = lock(&self.inbox);
            inbox.closed = true;
            inbox.receiver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}
