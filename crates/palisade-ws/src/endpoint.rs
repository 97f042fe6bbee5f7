//! Where to connect: an [`Endpoint`] produces the handshake request, once per attempt.
//!
//! A fixed URL (`&'static str`, `String`, [`Uri`]) is an endpoint. For headers that change
//! (a bearer token refreshed between reconnects), use [`endpoint_fn`]: its closure is called
//! before every attempt, so each reconnect carries a fresh token.
//!
//! ```
//! use palisade_ws::{IntoClientRequest, endpoint_fn};
//!
//! let endpoint = endpoint_fn(|| async {
//!     let token = "fresh-token"; // fetched from a token cache in real code
//!     let mut request = "wss://api.example.com/stream".into_client_request()?;
//!     request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
//!     Ok(request)
//! });
//! # let _ = palisade_ws::WsConfig::builder(endpoint);
//! ```

use std::fmt;
use std::future::{Future, Ready, ready};
use std::pin::Pin;

use palisade_core::BoxError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Uri;

/// The handshake request: an `http::Request<()>` whose URI is the `ws://` or `wss://` URL.
///
/// Build one with [`IntoClientRequest::into_client_request`] on a URL (which adds the
/// WebSocket headers, including a fresh `Sec-WebSocket-Key`), then add headers of your own.
pub type Request = tokio_tungstenite::tungstenite::handshake::client::Request;

/// Produces the handshake request for each connection attempt.
///
/// Called once per attempt, inside the attempt's connect timeout. An error fails that attempt
/// (reported as [`ConnectFailure::Endpoint`](crate::ConnectFailure::Endpoint)); the client
/// retries after the backoff delay like any other failed attempt.
pub trait Endpoint: Send + Sync + 'static {
    /// The request for the next attempt.
    fn request(&self) -> impl Future<Output = Result<Request, BoxError>> + Send;
}

impl Endpoint for &'static str {
    fn request(&self) -> impl Future<Output = Result<Request, BoxError>> + Send {
        ready_request(*self)
    }
}

impl Endpoint for String {
    fn request(&self) -> impl Future<Output = Result<Request, BoxError>> + Send {
        ready_request(self.as_str())
    }
}

impl Endpoint for Uri {
    fn request(&self) -> impl Future<Output = Result<Request, BoxError>> + Send {
        ready_request(self.clone())
    }
}

fn ready_request(url: impl IntoClientRequest) -> Ready<Result<Request, BoxError>> {
    ready(url.into_client_request().map_err(BoxError::from))
}

/// An [`Endpoint`] from a closure returning a future of the request; see [`endpoint_fn`].
#[derive(Clone, Copy)]
pub struct EndpointFn<F>(F);

/// Makes an [`Endpoint`] from `f`, called before every connection attempt.
pub const fn endpoint_fn<F, Fut>(f: F) -> EndpointFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Request, BoxError>> + Send,
{
    EndpointFn(f)
}

impl<F, Fut> Endpoint for EndpointFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Request, BoxError>> + Send,
{
    fn request(&self) -> impl Future<Output = Result<Request, BoxError>> + Send {
        (self.0)()
    }
}

impl<F> fmt::Debug for EndpointFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EndpointFn").finish_non_exhaustive()
    }
}

pub(crate) type RequestFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Request, BoxError>> + Send + 'a>>;

/// An [`Endpoint`] behind a pointer: the config is not generic over it.
pub(crate) trait DynEndpoint: Send + Sync {
    fn request(&self) -> RequestFuture<'_>;
}

impl<E: Endpoint> DynEndpoint for E {
    fn request(&self) -> RequestFuture<'_> {
        Box::pin(Endpoint::request(self))
    }
}
