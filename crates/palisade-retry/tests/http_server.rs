//! Against a real HTTP/1.1 server on 127.0.0.1 (feature `http`): a hyper server, and a hyper
//! client connection per attempt, with real sockets and real bytes.

#![cfg(feature = "http")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_retry::http::{BufferBodyLayer, ReplayBody};
use palisade_retry::{Attempts, RetryConfig, RetryLayer};
use support::Calls;
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, ServiceExt};

/// A hyper server that answers `503` + `Retry-After: 1` to the first two requests, then
/// `200 OK` with the request's body echoed back.
async fn flaky_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let counter = Arc::clone(&counter);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let counter = Arc::clone(&counter);
                async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let response = if n <= 2 {
                        Response::builder()
                            .status(StatusCode::SERVICE_UNAVAILABLE)
                            .header("retry-after", "1")
                            .body(Full::new(Bytes::new()))
                    } else {
                        Response::builder().body(Full::new(body))
                    };
                    Ok::<_, BoxError>(response?)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service),
            );
        }
    });
    (addr, served)
}

/// A hyper client: one connection per attempt.
async fn send<B>(
    addr: std::net::SocketAddr,
    request: Request<B>,
) -> Result<Response<Bytes>, BoxError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let socket = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(socket)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

#[tokio::test(start_paused = true)]
async fn a_real_server_answering_503_with_retry_after_is_retried_until_200() {
    let (addr, served) = flaky_server().await;
    let calls = Calls::default();
    let counter = calls.clone();
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(50)))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        // The body is a stream (not `Clone`): buffered so that every attempt sends it whole.
        .layer(BufferBodyLayer::default())
        .layer(RetryLayer::http(config))
        .service_fn(move |request: Request<ReplayBody<_>>| {
            counter.record();
            send(addr, request)
        });

    let chunks = ["item ", "7: ", "three left"]
        .map(|chunk| Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))));
    let request = Request::put(format!("http://{addr}/inventory/7"))
        .header("host", addr.to_string())
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.body(),
        "item 7: three left",
        "the whole body reached the server"
    );
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(served.load(Ordering::SeqCst), 3);
    // `Retry-After: 1` replaced the 50 ms backoff, measured on tokio's paused clock.
    assert_eq!(
        calls.gaps(),
        [Duration::from_secs(1), Duration::from_secs(1)]
    );
}
