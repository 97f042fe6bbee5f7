//! JSON helpers (feature `json`): send a value as a text message; receive typed values where a
//! message that does not parse arrives as an error item carrying the raw message, not as a
//! log line.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::handle::{SendFuture, WsHandle};
use crate::message::Message;
use crate::messages::Messages;

impl WsHandle {
    /// Sends `value` as a JSON text message; see [`WsHandle::send`].
    ///
    /// # Errors
    ///
    /// The serializer's error if `value` cannot be written as JSON; nothing is sent then.
    pub fn send_json<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<SendFuture, serde_json::Error> {
        let text = serde_json::to_string(value)?;
        Ok(self.send(Message::text(text)))
    }
}

impl Message {
    /// Parses the payload (text or binary) as JSON.
    ///
    /// # Errors
    ///
    /// The parser's error if it is not JSON of type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.as_bytes())
    }
}

impl Messages {
    /// The stream of received messages parsed as JSON values of type `T`.
    pub fn json<T: DeserializeOwned>(self) -> JsonMessages<T> {
        JsonMessages {
            messages: self,
            _type: PhantomData,
        }
    }
}

/// Received messages parsed as JSON; made by [`Messages::json`].
///
/// Yields `Ok(value)` for each message that parses and [`JsonError`], carrying the message
/// itself, for each one that does not. It ends when the message stream ends.
pub struct JsonMessages<T> {
    messages: Messages,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonMessages<T> {
    /// The next message, parsed; `None` once the client has ended.
    pub async fn recv(&mut self) -> Option<Result<T, JsonError>> {
        self.messages.recv().await.map(parse)
    }

    /// The message stream underneath.
    pub fn into_inner(self) -> Messages {
        self.messages
    }
}

fn parse<T: DeserializeOwned>(message: Message) -> Result<T, JsonError> {
    message.json().map_err(|error| JsonError { message, error })
}

impl<T: DeserializeOwned> Stream for JsonMessages<T> {
    type Item = Result<T, JsonError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .messages
            .poll_recv(cx)
            .map(|message| message.map(parse))
    }
}

impl<T> fmt::Debug for JsonMessages<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonMessages")
            .field("messages", &self.messages)
            .finish()
    }
}

/// A received message that is not JSON of the expected type, with the message itself.
#[derive(Debug, thiserror::Error)]
#[error("received message is not the expected JSON: {error}")]
pub struct JsonError {
    message: Message,
    #[source]
    error: serde_json::Error,
}

impl JsonError {
    /// The message as received.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The raw text, if it was a text message.
    pub fn raw_text(&self) -> Option<&str> {
        self.message.as_text()
    }

    /// The parser's error.
    pub fn error(&self) -> &serde_json::Error {
        &self.error
    }

    /// The message as received, taken back.
    pub fn into_message(self) -> Message {
        self.message
    }
}
