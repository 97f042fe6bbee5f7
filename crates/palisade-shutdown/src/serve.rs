//! A hyper-util server that follows the shutdown's phases (feature `serve`).
//!
//! [`serve`] accepts TCP connections and serves each with hyper-util's automatic HTTP/1 or
//! HTTP/2 connection, in a task of its own that the drain waits for. Any tower `Service` of
//! `Request<Incoming>` that can be cloned does: an axum `Router`, a `service_fn`, a stack
//! built with `ServiceBuilder`.
//!
//! | phase | what the server does |
//! |---|---|
//! | [`Running`](Phase::Running) to [`Grace`](Phase::Grace) | accepts and serves as usual |
//! | [`StopAccepting`](Phase::StopAccepting) | closes the listener: new connections are refused |
//! | [`Draining`](Phase::Draining) | closes every connection gracefully: an HTTP/1 connection closes once its in-flight response (body included) is written, an idle one at once; HTTP/2 sends `GOAWAY` and lets the open streams finish |
//! | [`Cancelling`](Phase::Cancelling) | drops the connections still open, with whatever they were doing |
//!
//! The future `serve` returns resolves once the listener is closed and every connection is
//! gone; dropping it drops the connections at once.
//!
//! Each request carries its connection's peer address as a [`SocketAddr`] request extension,
//! so keys by client address work behind `serve` (palisade-ratelimit's `PeerIp` reads it; in
//! an axum handler, `Extension<SocketAddr>`).
//!
//! Every connection counts as a registered task (like a [`ShutdownGuard`]) from the moment
//! it is accepted until it closes, so the drain also waits for the last bytes to be written.
//! A request pending since before the shutdown was triggered therefore ends at the deadline
//! at the latest, when its connection is dropped. Wrap the service in
//! [`HttpShutdownLayer`](crate::HttpShutdownLayer) as well, to count requests, send
//! `Connection: close` during the grace delay and answer `503` at the deadline.
//!
//! Upgraded connections (WebSocket) leave the server's tracking once upgraded: register
//! the session with its own [guard](crate::Shutdown::guard).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use palisade_shutdown::{Shutdown, serve};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let shutdown = Shutdown::new();
//! let app = ServiceBuilder::new()
//!     .layer(shutdown.http_layer())
//!     .service_fn(|_: Request<hyper::body::Incoming>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap();
//! let server = tokio::spawn(serve(listener, app, &shutdown).into_future());
//!
//! let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
//! client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
//! let mut response = String::new();
//! client.read_to_string(&mut response).await.unwrap();
//! assert!(response.starts_with("HTTP/1.1 200 OK"));
//! assert!(response.ends_with("hello"));
//!
//! shutdown.trigger(); // or SIGTERM, with `.on_signals()`
//! let report = shutdown.run().await.unwrap();
//! server.await.unwrap(); // the listener is closed and every connection is gone
//! assert_eq!(report.code(), 0);
//! assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "refused");
//! # }
//! ```

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use palisade_core::BoxError;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinError, JoinSet};
use tower_service::Service;

use crate::event::ShutdownEvent;
use crate::guard::ShutdownGuard;
use crate::phase::Phase;
use crate::shutdown::Shutdown;

/// How long the accept loop pauses after an error that is not about one connection (out of
/// file descriptors, say), before it tries again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `service` on the connections `listener` accepts, HTTP/1 and HTTP/2, until
/// `shutdown` stops it; see the [module docs](self) for what each phase does.
///
/// The returned [`Serve`] is a future (through [`IntoFuture`]): `.await` it, or spawn
/// `serve(..).into_future()`. It resolves once the listener is closed and every connection
/// is gone. It never fails: an accept error is logged and the loop goes on (after a short
/// pause, unless the error concerned only the connection being accepted).
///
/// The service is cloned for each connection, and hyper calls it once it is ready.
///
/// An axum `Router` should be finished with `with_state(())` (or the state it needs) before
/// it is served, as `axum::serve` does through `into_make_service`: served as it is, axum
/// turns each handler into a route again on every request (and applies the router's layers
/// to it each time).
pub fn serve<S, B>(listener: TcpListener, service: S, shutdown: &Shutdown) -> Serve<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Serve {
        listener,
        service,
        shutdown: shutdown.clone(),
    }
}

/// A server ready to run; made by [`serve`], run by awaiting it.
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve<S> {
    listener: TcpListener,
    service: S,
    shutdown: Shutdown,
}

impl<S> Serve<S> {
    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// When the socket cannot tell, as [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl<S, B> IntoFuture for Serve<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = ();
    type IntoFuture = ServeFuture;

    fn into_future(self) -> ServeFuture {
        ServeFuture(Box::pin(run(self)))
    }
}

/// The future of a [`Serve`]: resolves once the listener is closed and every connection is
/// gone. Dropping it drops the connections.
pub struct ServeFuture(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Future for ServeFuture {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ServeFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeFuture").finish_non_exhaustive()
    }
}

type Builder = auto::Builder<TokioExecutor>;

async fn run<S, B>(serve: Serve<S>)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Serve {
        listener,
        service,
        shutdown,
    } = serve;
    let local_addr = listener.local_addr().ok();
    let mut builder = Builder::new(TokioExecutor::new());
    // Lets WebSockets run over HTTP/2 too (RFC 8441), as axum does.
    builder.http2().enable_connect_protocol();
    let builder = Arc::new(builder);
    let cut = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    let mut stop = pin!(shutdown.wait_for(Phase::StopAccepting));
    tracing::debug!(?local_addr, "serving");

    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            Some(joined) = connections.join_next() => reap(joined),
            accepted = listener.accept() => match accepted {
                Ok((stream, remote_addr)) => {
                    // Registered before the task starts, so a drain beginning now waits for it.
                    let guard = shutdown.guard();
                    connections.spawn(connection(
                        Arc::clone(&builder),
                        stream,
                        remote_addr,
                        service.clone(),
                        guard,
                        Arc::clone(&cut),
                    ));
                }
                Err(error) if is_connection_error(&error) => {
                    tracing::debug!(%error, "connection failed while being accepted");
                }
                Err(error) => {
                    tracing::error!(%error, "accept error; pausing before the next accept");
                    tokio::select! {
                        biased;
                        () = &mut stop => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }

    // Closing the socket is what makes new connections fail at once.
    drop(listener);
    let open_connections = connections.len();
    tracing::info!(
        ?local_addr,
        open_connections,
        "stopped accepting connections"
    );
    shutdown.state.emit(&ShutdownEvent::StoppedAccepting {
        local_addr,
        open_connections,
    });

    while let Some(joined) = connections.join_next().await {
        reap(joined);
    }
    let count = cut.load(Ordering::Acquire);
    if count > 0 {
        tracing::warn!(
            ?local_addr,
            count,
            "connections still open at the deadline were dropped"
        );
        shutdown
            .state
            .emit(&ShutdownEvent::ConnectionsCut { count });
    }
    tracing::debug!(?local_addr, "server done");
}

/// Serves one connection: as usual until the drain begins, then gracefully (HTTP/1 closes
/// after the response in flight, HTTP/2 sends `GOAWAY`); dropped at the deadline. The guard
/// keeps the drain waiting until the connection is gone.
async fn connection<S, B>(
    builder: Arc<Builder>,
    stream: TcpStream,
    remote_addr: SocketAddr,
    service: S,
    guard: ShutdownGuard,
    cut: Arc<AtomicUsize>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // Small responses go out at once instead of waiting for more to send.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, %remote_addr, "cannot set TCP_NODELAY");
    }
    let service = TowerToHyperService::new(WithPeer {
        inner: service,
        peer: remote_addr,
    });
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
    let result = tokio::select! {
        biased;
        result = conn.as_mut() => result,
        () = guard.stopping() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                biased;
                result = conn.as_mut() => result,
                () = guard.cancelled() => {
                    cut.fetch_add(1, Ordering::AcqRel);
                    tracing::debug!(%remote_addr, "connection dropped at the shutdown deadline");
                    return;
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %remote_addr, "connection ended with an error");
    }
    drop(guard);
}

/// Inserts the connection's peer address into every request's extensions.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S, B> Service<Request<B>> for WithPeer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.peer);
        self.inner.call(request)
    }
}

fn reap(joined: Result<(), JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!(%error, "a connection task panicked");
    }
}

/// Errors about the one connection being accepted, not about the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
