//! A resilient WebSocket client: it notices a peer that stopped answering, reconnects with
//! backoff, and never loses a message silently.
//!
//! Reconnecting WebSocket clients usually get two things wrong: a peer that stops answering
//! while the TCP connection stays open is never noticed, and messages sent while
//! disconnected are dropped from a bounded buffer without anyone being told. This client,
//! built on tokio-tungstenite, closes both gaps:
//!
//! - **Dead-peer detection.** A ping every interval; if nothing at all (pong or any frame)
//!   arrives within the timeout after it, the connection is declared dead, dropped and
//!   re-established: a silent peer is found within `interval + timeout`.
//! - **Reconnect with backoff.** Delays come from `palisade-core`'s [`Backoff`] (exponential
//!   from 1 s, capped at 30 s, jittered, by default); attempts can be bounded, after which the
//!   client ends in [`Status::Failed`]. The attempt count starts over only after a connection
//!   stayed up for a minimum time, so a server that accepts and drops at once keeps being
//!   backed off. Each attempt has a connect timeout and asks its [`Endpoint`] for the URL and
//!   headers anew (for refreshed tokens). Abnormal closes, I/O errors and dead peers
//!   reconnect; [`WsHandle::close`] does not.
//! - **A send buffer that reports every drop.** [`WsHandle::send`] returns a [`SendFuture`]
//!   that resolves once the frame was written, or fails with a [`SendError`] saying why it
//!   never will be. While disconnected, messages wait in a buffer bounded by count and bytes,
//!   with an explicit [`OverflowPolicy`]; after reconnecting they are written in order, exactly
//!   once. Every dropped message fails its future, counts in [`Stats::dropped`] and emits
//!   [`WsEvent::Dropped`].
//! - **Status** as a [`watch`](tokio::sync::watch) ([`Status`]: `Connecting`, `Connected`,
//!   `Reconnecting { attempt, next_in }`, `Disconnected`, `Failed`), **events** through a
//!   core [`Listener`](palisade_core::Listener) ([`WsEvent`]) and `tracing`, an **on-connect
//!   hook** to resubscribe, and a **close with a timeout** (a bounded close handshake on a
//!   dead socket).
//!
//! A message handed to the socket when the connection breaks, before its write was confirmed,
//! fails with [`SendError::ConnectionLost`]: it may or may not have arrived, and it is not
//! sent again (no duplicates).
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `rustls` | `wss://` through rustls (ring provider, the platform's root certificates, or [`WsConfigBuilder::tls_config`]) |
//! | `json` | [`WsHandle::send_json`], [`Messages::json`]: a message that does not parse arrives as a [`JsonError`] with its raw text |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_ws::{BufferLimits, Message, OverflowPolicy, Status, WsConfig};
//!
//! # async fn echo_server() -> String {
//! #     use futures_util::{SinkExt, StreamExt};
//! #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! #     let url = format!("ws://{}", listener.local_addr().unwrap());
//! #     tokio::spawn(async move {
//! #         let (socket, _) = listener.accept().await.unwrap();
//! #         let mut ws = tokio_tungstenite::accept_async(socket).await.unwrap();
//! #         while let Some(Ok(message)) = ws.next().await {
//! #             if message.is_text() || message.is_binary() {
//! #                 ws.send(message).await.unwrap();
//! #             }
//! #         }
//! #     });
//! #     url
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = echo_server().await;
//! let config = WsConfig::builder(url)
//!     .heartbeat(Duration::from_secs(15), Duration::from_secs(10))
//!     .buffer(BufferLimits {
//!         policy: OverflowPolicy::DropOldest,
//!         ..BufferLimits::default()
//!     })
//!     .on_connect(|_info| vec![Message::text(r#"{"subscribe":"prices"}"#)])
//!     .build()?;
//! let (client, mut messages) = palisade_ws::connect(config)?;
//!
//! client.send("hello").await?; // resolved once written (buffered until connected)
//! assert_eq!(client.status(), Status::Connected);
//! assert_eq!(messages.recv().await, Some(Message::text(r#"{"subscribe":"prices"}"#)));
//! assert_eq!(messages.recv().await, Some(Message::text("hello")));
//!
//! client.close().await?; // never reconnects
//! assert_eq!(client.status(), Status::Disconnected);
//! assert_eq!(messages.recv().await, None);
//! # Ok(())
//! # }
//! ```

mod config;
mod driver;
mod endpoint;
mod error;
mod event;
mod handle;
#[cfg(feature = "json")]
mod json;
mod message;
mod messages;
mod shared;
mod status;
#[cfg(feature = "rustls")]
mod tls;

pub use palisade_core::Backoff;
pub use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub use crate::config::{
    BufferLimits, ConnectInfo, DEFAULT_BACKOFF, OverflowPolicy, WsConfig, WsConfigBuilder,
};
pub use crate::endpoint::{Endpoint, EndpointFn, Request, endpoint_fn};
pub use crate::error::{CloseError, ConfigError, ConnectError, SendError};
pub use crate::event::{ConnectFailure, DisconnectReason, WsEvent};
pub use crate::handle::{SendFuture, Stats, WsHandle, connect};
#[cfg(feature = "json")]
pub use crate::json::{JsonError, JsonMessages};
pub use crate::message::{Message, Text};
pub use crate::messages::Messages;
pub use crate::status::Status;

/// The byte buffer type of binary messages (from the `bytes` crate).
pub use bytes::Bytes;
