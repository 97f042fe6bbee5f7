//! Against a real HTTP/1.1 server on 127.0.0.1 (feature `http`).
//!
//! hyper is not in the workspace's dependency tree, so the server and the client are a few
//! lines of HTTP/1.1 over tokio's TCP sockets: real sockets, real bytes, one request per
//! connection (`Connection: close`).

#![cfg(feature = "http")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_retry::{Attempts, RetryConfig, RetryLayer};
use support::Calls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, ServiceExt};

/// Answers `503` + `Retry-After: 1` to the first two requests, then `200 OK`.
async fn flaky_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before sending a request");
                head.extend_from_slice(&buf[..n]);
            }
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let answer: &[u8] = if n <= 2 {
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            };
            socket.write_all(answer).await.unwrap();
            socket.shutdown().await.unwrap();
        }
    });
    (addr, served)
}

/// Sends the request over a fresh connection; parses the status, headers and body.
async fn send(
    addr: std::net::SocketAddr,
    request: Request<String>,
) -> Result<Response<String>, BoxError> {
    let mut socket = TcpStream::connect(addr).await?;
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        request.method(),
        request.uri().path(),
        request.body().len(),
        request.body(),
    );
    socket.write_all(head.as_bytes()).await?;
    let mut raw = String::new();
    socket.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("truncated response")?;
    let mut lines = head.lines();
    let status_line = lines.next().ok_or("empty response")?;
    let code: u16 = status_line.split(' ').nth(1).ok_or("no status")?.parse()?;
    let mut response = Response::builder().status(code);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header")?;
        response = response.header(name.trim(), value.trim());
    }
    Ok(response.body(body.to_owned())?)
}

#[tokio::test(start_paused = true)]
async fn a_real_server_answering_503_with_retry_after_is_retried_until_200() {
    let (addr, served) = flaky_server().await;
    let calls = Calls::default();
    let counter = calls.clone();
    let client = tower::service_fn(move |request: Request<String>| {
        counter.record();
        send(addr, request)
    });
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(50)))
        .build()
        .unwrap();
    let service = RetryLayer::http(config).layer(client);

    let request = Request::get(format!("http://{addr}/inventory"))
        .body(String::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "ok");
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(served.load(Ordering::SeqCst), 3);
    // `Retry-After: 1` replaced the 50 ms backoff, measured on tokio's paused clock.
    assert_eq!(
        calls.gaps(),
        [Duration::from_secs(1), Duration::from_secs(1)]
    );
}
