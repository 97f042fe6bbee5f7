//! State shared by the handles, the message stream and the driver task: the send buffer, the
//! receive buffer, the send outcomes, the status, the counters.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use palisade_core::event::Listener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WireMessage;

use crate::config::BufferLimits;
use crate::config::OverflowPolicy;
use crate::error::SendError;
use crate::event::WsEvent;
use crate::handle::SendFuture;
use crate::message::Message;
use crate::status::Status;

/// A message's sequence number: what its [`SendFuture`] asks [`Acks`] about. Numbers are
/// given in the order messages enter the send buffer, which is the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ack(NonZeroU64);

/// The outcomes of sent messages, without a channel per message.
///
/// Messages are written in the order of their numbers, so one watermark says which were
/// written: every number below it was written, unless it failed. Failures (evictions, a lost
/// connection, the client's end) are few; each is kept until its future learns of it or is
/// dropped. A future dropped before its message settled leaves its number behind instead, so
/// that the failure that may follow is not kept for nobody; the number goes once the message
/// settles. What is kept is thus bounded by the live futures and the unsettled messages.
pub(crate) struct Acks {
    /// Every message numbered below this was written or has failed.
    settled_below: AtomicU64,
    /// Whether `board.failed` is not empty.
    any_failed: AtomicBool,
    /// Whether `board.waiters` or `board.abandoned` is not empty: a moving watermark settles
    /// some of them.
    watched: AtomicBool,
    board: Mutex<Board>,
}

#[derive(Default)]
struct Board {
    failed: HashMap<Ack, SendError>,
    /// Futures polled before their outcome was known.
    waiters: Vec<(Ack, Waker)>,
    /// Unsettled messages whose future was dropped, in ascending order.
    abandoned: VecDeque<Ack>,
}

impl Acks {
    fn new() -> Self {
        Self {
            settled_below: AtomicU64::new(1),
            any_failed: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            board: Mutex::new(Board::default()),
        }
    }

    /// The outcome of message `ack`, or `Pending` with `cx`'s waker registered.
    pub(crate) fn poll(&self, ack: Ack, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        // The watermark first: a failure below it was recorded before it moved.
        if ack.0.get() < self.settled_below.load(Ordering::Acquire)
            && !self.any_failed.load(Ordering::Acquire)
        {
            return Poll::Ready(Ok(()));
        }
        let mut board = lock(&self.board);
        if let Some(error) = board.failed.remove(&ack) {
            self.any_failed
                .store(!board.failed.is_empty(), Ordering::Release);
            return Poll::Ready(Err(error));
        }
        match board.waiters.iter_mut().find(|(a, _)| *a == ack) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => board.waiters.push((ack, cx.waker().clone())),
        }
        // Paired with `written`: either it sees this flag, or this sees its watermark.
        self.watched.store(true, Ordering::SeqCst);
        if ack.0.get() < self.settled_below.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    /// The future of message `ack` is dropped without having given its outcome: what is kept
    /// for it goes, and a failure still to come is not kept.
    pub(crate) fn abandon(&self, ack: Ack) {
        // Written and nothing kept: nothing to let go of.
        if ack.0.get() < self.settled_below.load(Ordering::Acquire)
            && !self.any_failed.load(Ordering::Acquire)
        {
            return;
        }
        let mut board = lock(&self.board);
        if !board.failed.is_empty() && board.failed.remove(&ack).is_some() {
            self.any_failed
                .store(!board.failed.is_empty(), Ordering::Release);
            return;
        }
        if !board.waiters.is_empty() {
            board.waiters.retain(|(a, _)| *a != ack);
        }
        match board.abandoned.back() {
            Some(last) if *last > ack => {
                if let Err(at) = board.abandoned.binary_search(&ack) {
                    board.abandoned.insert(at, ack);
                }
            }
            _ => board.abandoned.push_back(ack),
        }
        // Paired with `written` as in `poll`: if it moved the watermark past `ack` meanwhile,
        // it may have settled before `ack` was added.
        self.watched.store(true, Ordering::SeqCst);
        if ack.0.get() < self.settled_below.load(Ordering::SeqCst) {
            self.settle(&mut board);
        }
    }

    /// Every message numbered below `below` that has not failed was written.
    fn written(&self, below: u64) {
        self.settled_below.store(below, Ordering::SeqCst);
        if self.watched.load(Ordering::SeqCst) {
            let mut board = lock(&self.board);
            self.settle(&mut board);
        }
    }

    /// Message `ack` failed with `error`; kept for its future unless that was dropped.
    fn failed(&self, ack: Ack, error: SendError) {
        let mut board = lock(&self.board);
        if let Ok(at) = board.abandoned.binary_search(&ack) {
            board.abandoned.remove(at);
        } else {
            board.failed.insert(ack, error);
            self.any_failed.store(true, Ordering::Release);
        }
        self.settle(&mut board);
    }

    /// Wakes the futures whose outcome is known and forgets the abandoned messages that
    /// were written.
    fn settle(&self, board: &mut Board) {
        let below = self.settled_below.load(Ordering::SeqCst);
        let Board {
            failed,
            waiters,
            abandoned,
        } = board;
        if !waiters.is_empty() {
            waiters.retain(|(ack, waker)| {
                let settled = ack.0.get() < below || failed.contains_key(ack);
                if settled {
                    waker.wake_by_ref();
                }
                !settled
            });
        }
        let written = abandoned.partition_point(|ack| ack.0.get() < below);
        abandoned.drain(..written);
        self.watched.store(
            !waiters.is_empty() || !abandoned.is_empty(),
            Ordering::SeqCst,
        );
    }

    /// How many failures and abandoned numbers are kept.
    #[cfg(test)]
    fn kept(&self) -> (usize, usize) {
        let board = lock(&self.board);
        (board.failed.len(), board.abandoned.len())
    }
}

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
    /// The number the next message gets.
    next_ack: NonZeroU64,
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
    pub(crate) acks: Arc<Acks>,
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
                next_ack: NonZeroU64::MIN,
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
            acks: Arc::new(Acks::new()),
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
            let ack = Ack(outbox.next_ack);
            outbox.next_ack = outbox.next_ack.saturating_add(1);
            let future = SendFuture::waiting(Arc::clone(&self.acks), ack);
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
            self.acks.failed(ack, error);
        }
    }

    /// Every message up to and including `last` that has not failed was written.
    pub(crate) fn written(&self, last: Ack) {
        self.acks.written(last.0.get().saturating_add(1));
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use futures_util::FutureExt;

    use super::*;

    /// A client's shared state with no driver: nothing is ever written, as in an outage.
    fn shared(messages: usize, policy: OverflowPolicy) -> Shared {
        let limits = BufferLimits {
            messages: NonZeroUsize::new(messages).unwrap(),
            bytes: NonZeroUsize::new(1 << 20).unwrap(),
            policy,
        };
        Shared::new(limits, 16, Arc::new(()))
    }

    #[test]
    fn failures_of_dropped_futures_are_not_kept_while_another_future_waits() {
        let shared = shared(2, OverflowPolicy::DropOldest);
        let asked = shared.send(Message::from("asked"));
        let unasked = shared.send(Message::from("unasked"));
        for n in 0..1000 {
            drop(shared.send(Message::from(format!("m{n}"))));
        }
        // Two failures wait for their futures; the last two messages are still buffered.
        assert_eq!(shared.acks.kept(), (2, 2));
        assert_eq!(asked.now_or_never(), Some(Err(SendError::Evicted)));
        drop(unasked);
        assert_eq!(shared.acks.kept(), (0, 2));

        let shared = self::shared(2, OverflowPolicy::DropNewest);
        let first = shared.send(Message::from("first"));
        for n in 0..1000 {
            drop(shared.send(Message::from(format!("m{n}"))));
        }
        assert_eq!(shared.acks.kept(), (0, 1));
        drop(first);
        assert_eq!(shared.acks.kept(), (0, 2));
    }

    #[test]
    fn dropped_futures_are_forgotten_once_their_messages_are_written() {
        let shared = shared(8, OverflowPolicy::RejectNew);
        let early = shared.send(Message::from("early"));
        for _ in 0..3 {
            drop(shared.send(Message::from("m")));
        }
        assert_eq!(shared.acks.kept(), (0, 3));
        let last = lock(&shared.outbox)
            .queue
            .back()
            .and_then(|p| p.ack)
            .unwrap();
        shared.written(last);
        assert_eq!(shared.acks.kept(), (0, 0));
        assert_eq!(early.now_or_never(), Some(Ok(())));
    }
}
