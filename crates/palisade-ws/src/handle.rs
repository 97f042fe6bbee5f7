//! Starting a client, and the handle that sends, closes and observes it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::sync::watch;

use crate::config::WsConfig;
use crate::driver::Driver;
use crate::error::{CloseError, ConnectError, SendError};
use crate::message::Message;
use crate::messages::Messages;
use crate::shared::{Ack, Acks, Shared, lock};
use crate::status::Status;

/// Starts a client: returns at once, with the first connection attempt under way.
///
/// The client runs as a task on the current Tokio runtime. It lives while the [`WsHandle`]
/// (or any clone) or the [`Messages`] stream lives; when all are dropped it closes as
/// [`WsHandle::close`] would. Messages sent before the first connection is up are buffered.
///
/// # Errors
///
/// [`ConnectError::NoRuntime`] outside a Tokio runtime.
pub fn connect(config: WsConfig) -> Result<(WsHandle, Messages), ConnectError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConnectError::NoRuntime)?;
    let shared = Arc::new(Shared::new(
        config.buffer,
        config.receive_capacity.get(),
        Arc::clone(&config.listener),
    ));
    let owner = Arc::new(Owner {
        shared: Arc::clone(&shared),
    });
    let close_timeout = config.close_timeout;
    runtime.spawn(Driver::new(Arc::clone(&shared), config).run());
    let handle = WsHandle {
        shared: Arc::clone(&shared),
        _owner: Arc::clone(&owner),
        close_timeout,
    };
    Ok((handle, Messages::new(shared, owner)))
}

/// Closes the client when the last handle and the message stream are gone.
pub(crate) struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.request_close();
    }
}

/// Sends messages, closes the client and reports its status; cheap to clone.
#[derive(Clone)]
pub struct WsHandle {
    shared: Arc<Shared>,
    /// Keeps the client alive; never read.
    _owner: Arc<Owner>,
    close_timeout: std::time::Duration,
}

impl WsHandle {
    /// Queues `message` and returns a future that resolves once the frame was written to the
    /// socket, or fails with the reason it never will be.
    ///
    /// The message is queued when `send` is called, not when the future is first polled:
    /// dropping the future does not take the message back. While disconnected it waits in the
    /// send buffer and goes out, in order, after the next connection is up. A full buffer
    /// applies its [`OverflowPolicy`](crate::OverflowPolicy); every message it drops fails
    /// its future, counts in [`Stats::dropped`] and emits
    /// [`WsEvent::Dropped`](crate::WsEvent::Dropped).
    pub fn send(&self, message: impl Into<Message>) -> SendFuture {
        self.shared.send(message.into())
    }

    /// The current status.
    pub fn status(&self) -> Status {
        *self.shared.status.borrow()
    }

    /// A receiver of every status change.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// Waits until the client is connected.
    ///
    /// # Errors
    ///
    /// The final status (`Disconnected` or `Failed`) if the client ends instead.
    pub async fn connected(&self) -> Result<(), Status> {
        let mut status = self.shared.status.subscribe();
        let reached = status
            .wait_for(|s| s.is_connected() || s.is_final())
            .await
            .map(|s| *s);
        match reached {
            Ok(Status::Connected) => Ok(()),
            Ok(other) => Err(other),
            // The sender lives in `shared`, which this handle holds.
            Err(_) => Err(Status::Disconnected),
        }
    }

    /// Closes the client: no new messages are accepted, those already queued are written,
    /// the close handshake is made, and the client ends in `Disconnected` without
    /// reconnecting. Bounded by the close timeout; messages not written by then fail with
    /// [`SendError::Closed`]. Closing a client that already ended returns at once.
    ///
    /// # Errors
    ///
    /// [`CloseError::TimedOut`] if the flush and handshake did not finish in time (a dead
    /// socket); the connection was dropped.
    pub async fn close(&self) -> Result<(), CloseError> {
        self.shared.request_close();
        let mut status = self.shared.status.subscribe();
        // The sender lives in `shared`, which this handle holds: this cannot fail.
        let _ = status.wait_for(Status::is_final).await;
        if self.shared.close_timed_out.load(Ordering::Acquire) {
            Err(CloseError::TimedOut(self.close_timeout))
        } else {
            Ok(())
        }
    }

    /// The client's counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            connects: c.connects.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
            dead_peers: c.dead_peers.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            buffered: lock(&self.shared.outbox).queue.len(),
        }
    }
}

impl fmt::Debug for WsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsHandle")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// A client's counters; see [`WsHandle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections established.
    pub connects: u64,
    /// Connections established after an earlier one was lost.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Connections declared dead by the heartbeat.
    pub dead_peers: u64,
    /// Messages not written (each one's send future failed).
    pub dropped: u64,
    /// Messages whose write was confirmed.
    pub sent: u64,
    /// Data messages received.
    pub received: u64,
    /// Messages in the send buffer now.
    pub buffered: usize,
}

/// Resolves once a message was written to the socket, or fails with why it never will be;
/// returned by [`WsHandle::send`].
///
/// The message is already queued: awaiting is only to learn the outcome.
#[must_use = "the message is queued either way; await the future to learn whether it was written"]
pub struct SendFuture {
    state: SendState,
}

enum SendState {
    Done(Option<Result<(), SendError>>),
    /// Message `ack`'s outcome is to be read from the client's `Acks`.
    Waiting(Arc<Acks>, Ack),
}

impl SendFuture {
    pub(crate) fn waiting(acks: Arc<Acks>, ack: Ack) -> Self {
        Self {
            state: SendState::Waiting(acks, ack),
        }
    }

    pub(crate) fn ready(result: Result<(), SendError>) -> Self {
        Self {
            state: SendState::Done(Some(result)),
        }
    }
}

impl Future for SendFuture {
    type Output = Result<(), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            // Polled again after completion: the outcome was already given.
            SendState::Done(result) => Poll::Ready(result.take().unwrap_or(Err(SendError::Closed))),
            // The driver settles every message, written or failed, even when it ends early.
            SendState::Waiting(acks, ack) => {
                let result = std::task::ready!(acks.poll(*ack, cx));
                self.state = SendState::Done(None);
                Poll::Ready(result)
            }
        }
    }
}

impl Drop for SendFuture {
    fn drop(&mut self) {
        // Nothing to do once the outcome was given.
        if let SendState::Waiting(acks, ack) = &self.state {
            acks.abandon(*ack);
        }
    }
}

impl fmt::Debug for SendFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            SendState::Done(_) => "done",
            SendState::Waiting(..) => "waiting",
        };
        f.debug_struct("SendFuture").field("state", &state).finish()
    }
}
