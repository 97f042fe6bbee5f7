//! The stream of received messages.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;

use crate::handle::Owner;
use crate::message::Message;
use crate::shared::{Shared, lock};

/// The messages the client receives, in order, across reconnects; returned by
/// [`connect`](crate::connect).
///
/// It ends (`None`) once the client has ended (closed, closed by the server, or failed) and
/// every message received before that has been taken. Reconnects do not end it.
///
/// Messages wait here up to the receive capacity; while it is full the client stops reading
/// the socket. Dropping the stream discards messages that arrive later (the connection stays
/// up while a [`WsHandle`](crate::WsHandle) lives).
pub struct Messages {
    shared: Arc<Shared>,
    /// Messages taken from the shared buffer in one swap, handed out without the lock.
    local: VecDeque<Message>,
    /// Keeps the client alive; never read.
    _owner: Arc<Owner>,
}

impl Messages {
    pub(crate) fn new(shared: Arc<Shared>, owner: Arc<Owner>) -> Self {
        Self {
            shared,
            local: VecDeque::new(),
            _owner: owner,
        }
    }

    /// The next message; `None` once the client has ended and every message was taken.
    pub async fn recv(&mut self) -> Option<Message> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message; see [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if let Some(message) = self.local.pop_front() {
            return Poll::Ready(Some(message));
        }
        let wake_driver = {
            let mut inbox = lock(&self.shared.inbox);
            if inbox.queue.is_empty() {
                if inbox.closed {
                    return Poll::Ready(None);
                }
                match &mut inbox.receiver {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            std::mem::swap(&mut inbox.queue, &mut self.local);
            std::mem::take(&mut inbox.driver_waiting)
        };
        if wake_driver {
            self.shared.driver.wake();
        }
        Poll::Ready(self.local.pop_front())
    }

    /// Messages waiting to be taken.
    pub fn len(&self) -> usize {
        self.local.len() + lock(&self.shared.inbox).queue.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Stream for Messages {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        let wake_driver = {
            let mut inbox = lock(&self.shared.inbox);
            inbox.receiver_gone = true;
            inbox.queue.clear();
            inbox.receiver = None;
            std::mem::take(&mut inbox.driver_waiting)
        };
        if wake_driver {
            self.shared.driver.wake();
        }
    }
}

impl fmt::Debug for Messages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messages")
            .field("waiting", &self.len())
            .finish_non_exhaustive()
    }
}
