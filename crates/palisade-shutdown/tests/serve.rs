//! `serve` (feature `serve`) on real sockets, with hyper clients: HTTP/1 and HTTP/2, an axum
//! `Router`, stop accepting, graceful connection shutdown, connections dropped at the
//! deadline.
//!
//! These run on real time but never wait on it for an outcome: every step waits for an
//! event (a handler started, a phase, a connection closed), and the deadlines are either
//! zero (the drain is cut at once) or an hour (never reached).

#![cfg(feature = "serve")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_core::event::listener_fn;
use palisade_shutdown::{Phase, RunError, Shutdown, ShutdownEvent, ShutdownReport, serve};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, service_fn};

const NEVER: Duration = Duration::from_secs(3600);

/// A coordinator whose events go to the returned receiver; no deadline is ever reached
/// unless `drain_deadline` is zero.
fn shutdown_with_events(
    drain_deadline: Duration,
) -> (Shutdown, mpsc::UnboundedReceiver<ShutdownEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = Shutdown::builder()
        .drain_deadline(drain_deadline)
        .cancel_grace(NEVER)
        .listener(listener_fn(move |event: &ShutdownEvent| {
            let _ = tx.send(event.clone());
        }))
        .build();
    (shutdown, rx)
}

async fn next_matching(
    events: &mut mpsc::UnboundedReceiver<ShutdownEvent>,
    matches: impl Fn(&ShutdownEvent) -> bool,
) -> ShutdownEvent {
    loop {
        let event = events.recv().await.expect("the coordinator is alive");
        if matches(&event) {
            return event;
        }
    }
}

/// Binds a local port and serves `service` on it.
async fn start<S, B>(shutdown: &Shutdown, service: S) -> (SocketAddr, JoinHandle<()>)
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<palisade_core::BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve(listener, service, shutdown);
    let addr = server.local_addr().unwrap();
    (addr, tokio::spawn(server.into_future()))
}

fn spawn_run(shutdown: &Shutdown) -> JoinHandle<Result<ShutdownReport, RunError>> {
    let shutdown = shutdown.clone();
    tokio::spawn(async move { shutdown.run().await })
}

type Http1 = http1::SendRequest<Empty<Bytes>>;
type Http2 = http2::SendRequest<Empty<Bytes>>;

/// An HTTP/1 client connection, and its task (which ends when the connection closes).
async fn connect_http1(addr: SocketAddr) -> (Http1, JoinHandle<hyper::Result<()>>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    (sender, tokio::spawn(conn))
}

/// An HTTP/2 (prior knowledge) client connection, and its task.
async fn connect_http2(addr: SocketAddr) -> (Http2, JoinHandle<hyper::Result<()>>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

fn get_request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(header::HOST, "localhost")
        .body(Empty::new())
        .unwrap()
}

async fn text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// A handler that signals `started`, then answers once `release` is notified.
fn held(
    started: Arc<Notify>,
    release: Arc<Notify>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<String>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |_: Request<Incoming>| {
        let (started, release) = (Arc::clone(&started), Arc::clone(&release));
        async move {
            started.notify_one();
            release.notified().await;
            Ok::<_, Infallible>(Response::new("released".to_owned()))
        }
    })
}

#[tokio::test]
async fn serves_an_axum_router_over_http1_and_http2() {
    let shutdown = Shutdown::new();
    let app = Router::new().route("/", get(|| async { "hello" }));
    let (addr, server) = start(&shutdown, app).await;

    let (mut h1, _) = connect_http1(addr).await;
    let response = h1.send_request(get_request("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "hello");

    let (mut h2, _) = connect_http2(addr).await;
    let response = h2.send_request(get_request("/")).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(text(response).await, "hello");

    shutdown.trigger();
    let report = shutdown.run().await.unwrap();
    server.await.unwrap();
    assert_eq!(report.code(), 0);
}

#[tokio::test]
async fn every_request_carries_its_peer_address() {
    let shutdown = Shutdown::new();
    let service = service_fn(|request: Request<Incoming>| async move {
        let peer = request.extensions().get::<SocketAddr>().copied();
        Ok::<_, Infallible>(Response::new(format!("{peer:?}")))
    });
    let (addr, _server) = start(&shutdown, service).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    let _conn = tokio::spawn(conn);
    let response = sender
        .send_request(Request::get("/").body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(text(response).await, format!("{:?}", Some(local)));
}

#[tokio::test]
async fn once_it_stops_accepting_new_connections_are_refused() {
    let (shutdown, mut events) = shutdown_with_events(NEVER);
    let app = Router::new().route("/", get(|| async { "hello" }));
    let (addr, server) = start(&shutdown, app).await;
    let (mut open, open_conn) = connect_http1(addr).await;
    assert_eq!(
        open.send_request(get_request("/")).await.unwrap().status(),
        StatusCode::OK
    );

    shutdown.trigger();
    let run = spawn_run(&shutdown);
    let event = next_matching(&mut events, |event| {
        matches!(event, ShutdownEvent::StoppedAccepting { .. })
    })
    .await;
    let ShutdownEvent::StoppedAccepting {
        local_addr,
        open_connections,
    } = event
    else {
        unreachable!()
    };
    assert_eq!(local_addr, Some(addr));
    assert_eq!(open_connections, 1);

    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // The idle keep-alive connection is closed when the drain begins.
    open_conn.await.unwrap().unwrap();
    let report = run.await.unwrap().unwrap();
    server.await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.tasks_at_drain, 1, "the open connection");
}

#[tokio::test]
async fn an_in_flight_http1_request_completes_then_its_connection_closes() {
    let shutdown = Shutdown::new();
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let app = ServiceBuilder::new()
        .layer(shutdown.http_layer())
        .service(held(Arc::clone(&started), Arc::clone(&release)));
    let (addr, server) = start(&shutdown, app).await;
    let (mut client, conn) = connect_http1(addr).await;
    let in_flight = tokio::spawn(client.send_request(get_request("/")));
    started.notified().await;

    shutdown.trigger();
    let run = spawn_run(&shutdown);
    shutdown.wait_for(Phase::Draining).await;
    assert_eq!(shutdown.in_flight(), 1);
    release.notify_one();

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONNECTION], "close");
    assert_eq!(text(response).await, "released");
    conn.await.unwrap().unwrap();
    assert!(client.ready().await.is_err(), "the connection is closed");

    let report = run.await.unwrap().unwrap();
    server.await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.requests_at_drain, 1);
}

#[tokio::test]
async fn an_http2_connection_gets_goaway_and_its_open_stream_finishes() {
    let shutdown = Shutdown::new();
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let app = ServiceBuilder::new()
        .layer(shutdown.http_layer())
        .service(held(Arc::clone(&started), Arc::clone(&release)));
    let (addr, server) = start(&shutdown, app).await;
    let (mut client, conn) = connect_http2(addr).await;
    let in_flight = tokio::spawn(client.send_request(get_request("/")));
    started.notified().await;

    shutdown.trigger();
    let run = spawn_run(&shutdown);
    shutdown.wait_for(Phase::Draining).await;
    release.notify_one();

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers().get(header::CONNECTION).is_none(),
        "HTTP/2 has no Connection header"
    );
    assert_eq!(text(response).await, "released");
    // After GOAWAY and the last stream, the server closes the connection cleanly.
    conn.await.unwrap().unwrap();

    let report = run.await.unwrap().unwrap();
    server.await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn at_the_deadline_a_connection_still_busy_is_dropped() {
    let (shutdown, mut events) = shutdown_with_events(Duration::ZERO);
    let started = Arc::new(Notify::new());
    // Never answers and is never woken again: only dropping the connection ends it. No
    // shutdown layer: the server's own tracking is what ends it.
    let app = held(Arc::clone(&started), Arc::new(Notify::new()));
    let (addr, server) = start(&shutdown, app).await;
    let (mut client, conn) = connect_http1(addr).await;
    let in_flight = tokio::spawn(client.send_request(get_request("/")));
    started.notified().await;

    shutdown.trigger();
    let report = shutdown.run().await.unwrap();
    assert_eq!(report.tasks_cancelled, 1, "its connection");
    assert_eq!(report.abandoned, 0, "dropping the connection ended it");
    assert_eq!(report.code(), 1);

    assert!(
        in_flight.await.unwrap().is_err(),
        "the connection was closed"
    );
    let _ = conn.await.unwrap();
    server.await.unwrap();
    let cut = next_matching(&mut events, |event| {
        matches!(event, ShutdownEvent::ConnectionsCut { .. })
    })
    .await;
    assert_eq!(cut, ShutdownEvent::ConnectionsCut { count: 1 });
}

#[tokio::test]
async fn at_the_deadline_a_request_pending_since_before_the_trigger_is_never_abandoned() {
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::ZERO)
        .cancel_grace(NEVER)
        .build();
    let started = Arc::new(Notify::new());
    let app = ServiceBuilder::new()
        .layer(shutdown.http_layer())
        .service(held(Arc::clone(&started), Arc::new(Notify::new())));
    let (addr, server) = start(&shutdown, app).await;
    let (mut client, _conn) = connect_http1(addr).await;
    let in_flight = tokio::spawn(client.send_request(get_request("/")));
    started.notified().await;

    shutdown.trigger();
    let report = shutdown.run().await.unwrap();
    assert_eq!(report.requests_cancelled, 1);
    assert_eq!(report.tasks_cancelled, 1, "its connection");
    assert_eq!(report.abandoned, 0);
    // Polled again by the connection's graceful shutdown, the request hears the deadline
    // and answers 503; had it not, dropping the connection would have ended it.
    if let Ok(response) = in_flight.await.unwrap() {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    server.await.unwrap();
}

/// A streaming body fed by a channel, like an SSE stream.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|data| Ok(Frame::data(data))))
    }
}

#[tokio::test]
async fn a_stream_still_open_at_the_deadline_is_cut() {
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::ZERO)
        .cancel_grace(NEVER)
        .build();
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let app = ServiceBuilder::new()
        .layer(shutdown.http_layer())
        .service(service_fn(move |_: Request<Incoming>| {
            let (tx, rx) = mpsc::channel(1);
            events_tx.send(tx).unwrap();
            async move { Ok::<_, Infallible>(Response::new(ChannelBody(rx))) }
        }));
    let (addr, server) = start(&shutdown, app).await;
    let (mut client, _conn) = connect_http1(addr).await;
    let response = client.send_request(get_request("/")).await.unwrap();
    let events = events_rx.recv().await.unwrap();
    events
        .send(Bytes::from_static(b"data: 1\n\n"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: 1\n\n");

    shutdown.trigger();
    let report = shutdown.run().await.unwrap();
    assert_eq!(report.requests_cancelled, 1);
    assert_eq!(report.abandoned, 0);
    loop {
        match body.frame().await {
            Some(Ok(_)) => {}
            Some(Err(_)) => break,
            None => panic!("the stream must be cut, not ended as if complete"),
        }
    }
    server.await.unwrap();
    drop(events);
}

#[allow(clippy::unused_async)]
async fn boom() -> &'static str {
    panic!("boom at /boom")
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_serves_on() {
    let (shutdown, mut events) = shutdown_with_events(NEVER);
    let app = ServiceBuilder::new()
        .layer(shutdown.catch_panic_layer())
        .service(
            Router::new()
                .route("/", get(|| async { "fine" }))
                .route("/boom", get(boom)),
        );
    let (addr, server) = start(&shutdown, app).await;
    let (mut client, _conn) = connect_http1(addr).await;

    let response = client.send_request(get_request("/boom")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(text(response).await, "");
    let event = next_matching(&mut events, |event| {
        matches!(event, ShutdownEvent::HandlerPanicked { .. })
    })
    .await;
    assert_eq!(
        event,
        ShutdownEvent::HandlerPanicked {
            message: "boom at /boom".to_owned()
        }
    );

    client.ready().await.unwrap();
    let response = client.send_request(get_request("/")).await.unwrap();
    assert_eq!(text(response).await, "fine", "same connection, served on");

    shutdown.trigger();
    assert_eq!(shutdown.run().await.unwrap().code(), 0);
    server.await.unwrap();
}

#[tokio::test]
async fn a_server_started_after_the_drain_began_closes_at_once() {
    let shutdown = Shutdown::builder().drain_deadline(NEVER).build();
    shutdown.trigger();
    shutdown.run().await.unwrap();
    let (addr, server) = start(&shutdown, Router::new()).await;
    server.await.unwrap();
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}
