//! A real HTTP/1 server (hyper, keep-alive, real sockets) with the pool in front: a client's
//! idle keep-alive connection holds no permit, so other clients are still admitted up to the
//! limit.
//!
//! hyper 1 asks a service for readiness per request, but hyper 0.14, tonic and tower's own
//! `Buffer`/`MakeService` stacks make a connection's service ready *before* its next request
//! exists. Each connection here does the same, on purpose: it readies its service when it
//! opens and again right after each response, so a layer that reserved capacity in
//! `poll_ready` would hold it for as long as the connection idles. The last test shows that
//! tower's `ConcurrencyLimit` does exactly that under this server.

#![cfg(feature = "http")]

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use palisade_core::BoxError;
use palisade_pool::PoolConfig;
use palisade_pool::http::HttpConcurrencyPoolLayer;
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceBuilder, ServiceExt};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// Serves `service` on a local port, HTTP/1 with keep-alive; each connection readies its
/// service before each request arrives. Returns the address.
async fn serve<S, B>(service: S) -> std::net::SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let template = service.clone();
            tokio::spawn(async move {
                // The connection's service, readied before its first request exists.
                let mut first = template.clone();
                if first.ready().await.is_err() {
                    return;
                }
                let slot = Arc::new(Mutex::new(Some(first)));
                let per_request = hyper::service::service_fn(move |request| {
                    let (slot, mut next) = (Arc::clone(&slot), template.clone());
                    async move {
                        let ready = slot.lock().unwrap().take();
                        let mut ready = match ready {
                            Some(ready) => ready,
                            None => {
                                let mut fresh = next.clone();
                                if let Err(error) = fresh.ready().await {
                                    return Err(into_box(error));
                                }
                                fresh
                            }
                        };
                        let response = match ready.call(request).await {
                            Ok(response) => response,
                            Err(error) => return Err(into_box(error)),
                        };
                        // Ready for the next request before it arrives, as hyper 0.14 did.
                        if next.ready().await.is_ok() {
                            *slot.lock().unwrap() = Some(next);
                        }
                        Ok::<_, std::io::Error>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), per_request)
                    .await;
            });
        }
    });
    address
}

/// A concrete error for hyper (a boxed one trips a higher-ranked lifetime limitation of the
/// compiler in spawned connection futures).
fn into_box<E: Into<BoxError>>(error: E) -> std::io::Error {
    std::io::Error::other(error.into())
}

/// A keep-alive client connection.
async fn connect(address: std::net::SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(address).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends `GET /` on `client` and reads the whole response.
async fn get(client: &mut SendRequest<Empty<Bytes>>) -> Result<(StatusCode, Bytes), BoxError> {
    client.ready().await?;
    let request = Request::get("/")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let response = client.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[tokio::test]
async fn an_idle_keep_alive_connection_holds_no_permit() {
    // One permit and no queue: a permit held by anyone else means a 503 at once.
    let config = PoolConfig::builder(nz(1))
        .queue_capacity(0)
        .build()
        .unwrap();
    let pool = HttpConcurrencyPoolLayer::new(config);
    let handle = pool.handle();
    let address = serve(ServiceBuilder::new().layer(pool).service_fn(hello)).await;

    // The first client makes a request and leaves its connection open and idle; the server
    // has readied that connection's service for a next request.
    let mut idle = connect(address).await;
    assert_eq!(
        get(&mut idle).await.unwrap(),
        (StatusCode::OK, "hello".into())
    );
    assert_eq!(handle.in_flight(), 0, "the idle connection holds nothing");

    // Other clients are admitted, one after the other, up to the limit of one.
    for _ in 0..3 {
        let mut other = connect(address).await;
        assert_eq!(
            get(&mut other).await.unwrap(),
            (StatusCode::OK, "hello".into())
        );
        assert_eq!(
            get(&mut other).await.unwrap(),
            (StatusCode::OK, "hello".into())
        );
    }
    assert_eq!(handle.in_flight(), 0);

    // The idle connection still works.
    assert_eq!(
        get(&mut idle).await.unwrap(),
        (StatusCode::OK, "hello".into())
    );
}

#[tokio::test]
async fn towers_concurrency_limit_hoards_its_permit_on_the_same_server() {
    // tower's limit of one, shedding instead of waiting when it is not ready: the idle
    // connection's readied service holds the only permit, so the next client is refused.
    let service = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service_fn(hello);
    let address = serve(service).await;

    let mut idle = connect(address).await;
    assert_eq!(
        get(&mut idle).await.unwrap(),
        (StatusCode::OK, "hello".into())
    );

    let mut other = connect(address).await;
    assert!(
        get(&mut other).await.is_err(),
        "tower's ConcurrencyLimit let the idle connection keep its permit"
    );
}
