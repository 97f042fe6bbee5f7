//! What a client sends and receives: text and binary data messages.
//!
//! Control frames (ping, pong, close) are the client's own business and never appear here.
//! Payloads are reference-counted: cloning a received [`Message`] does not copy it.

use std::fmt;
use std::ops::Deref;

use bytes::{Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Message as WireMessage;
use tokio_tungstenite::tungstenite::protocol::frame::{Payload, Utf8Payload};

/// A WebSocket data message: UTF-8 text or binary.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8 by construction).
    Text(Text),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Text>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Message::Binary(bytes.into())
    }

    /// The payload's length in bytes: what the send buffer's byte limit counts.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// The payload's bytes, text or binary.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(text) => text.as_str().as_bytes(),
            Message::Binary(bytes) => bytes,
        }
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self, Message::Binary(_))
    }

    /// The frame tungstenite writes.
    pub(crate) fn into_wire(self) -> WireMessage {
        match self {
            Message::Text(text) => WireMessage::Text(text.0),
            Message::Binary(bytes) => WireMessage::Binary(Payload::Shared(bytes)),
        }
    }

    /// A data message from a frame tungstenite read; `None` for control frames.
    pub(crate) fn from_wire(message: WireMessage) -> Option<Self> {
        match message {
            WireMessage::Text(text) => Some(Message::Text(Text::shared(text))),
            WireMessage::Binary(payload) => Some(Message::Binary(payload_bytes(payload))),
            WireMessage::Ping(_)
            | WireMessage::Pong(_)
            | WireMessage::Close(_)
            | WireMessage::Frame(_) => None,
        }
    }
}

fn payload_bytes(payload: Payload) -> Bytes {
    match payload {
        Payload::Owned(bytes) => bytes.freeze(),
        Payload::Shared(bytes) => bytes,
        Payload::Vec(vec) => Bytes::from(vec),
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(text) => f.debug_tuple("Text").field(&text.as_str()).finish(),
            Message::Binary(bytes) => f.debug_tuple("Binary").field(bytes).finish(),
        }
    }
}

impl From<Text> for Message {
    fn from(text: Text) -> Self {
        Message::Text(text)
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text.into())
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.into())
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Message::Binary(bytes)
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Message::Binary(bytes.into())
    }
}

impl From<&[u8]> for Message {
    fn from(bytes: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(bytes))
    }
}

/// The payload of a text message: UTF-8, reference-counted once received.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Text(Utf8Payload);

impl Text {
    /// Text from a static string, without copying.
    pub const fn from_static(text: &'static str) -> Self {
        Text(Utf8Payload::from_static(text))
    }

    /// Wraps a received payload, switched to shared storage so that clones do not copy.
    fn shared(mut payload: Utf8Payload) -> Self {
        Text(payload.share())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Text(text.into())
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        // Copied once into shared storage, so clones do not copy again.
        Text::shared(Utf8Payload::from(text))
    }
}

impl TryFrom<Bytes> for Text {
    type Error = std::str::Utf8Error;

    /// Text from bytes that must be UTF-8, without copying.
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        Utf8Payload::try_from(bytes).map(Text)
    }
}

impl TryFrom<BytesMut> for Text {
    type Error = std::str::Utf8Error;

    /// Text from bytes that must be UTF-8, without copying.
    fn try_from(bytes: BytesMut) -> Result<Self, Self::Error> {
        Utf8Payload::try_from(bytes).map(Text::shared)
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_messages_survive_the_wire_conversion() {
        for message in [
            Message::text("hello"),
            Message::text(String::from("owned")),
            Message::binary(vec![1, 2, 3]),
            Message::binary(Bytes::from_static(b"static")),
        ] {
            let back = Message::from_wire(message.clone().into_wire()).unwrap();
            assert_eq!(back, message);
        }
    }

    #[test]
    fn control_frames_are_not_data_messages() {
        assert!(Message::from_wire(WireMessage::Ping(Payload::default())).is_none());
        assert!(Message::from_wire(WireMessage::Close(None)).is_none());
    }

    #[test]
    fn text_rejects_invalid_utf8() {
        assert!(Text::try_from(Bytes::from_static(&[0xff, 0xfe])).is_err());
        assert_eq!(Text::try_from(Bytes::from_static(b"ok")).unwrap(), "ok");
    }
}
