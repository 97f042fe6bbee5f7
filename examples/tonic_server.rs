//! A gRPC server (tonic) behind Palisade's layers, where each rejection becomes the gRPC
//! status a client expects, and a client that shows it.
//!
//! ```sh
//! # Server and client in one process: the client exceeds the rate limit, then trips the breaker.
//! cargo run -p palisade-examples --example tonic_server
//! # Or apart:
//! cargo run -p palisade-examples --example tonic_server -- --server --addr 127.0.0.1:50051
//! cargo run -p palisade-examples --example tonic_server -- --client http://127.0.0.1:50051
//! ```
//!
//! Expected output of the first command (the port, the times and the pushbacks vary; a slow
//! first call can let one more greeting through before the refusal):
//!
//! ```text
//! listening on http://127.0.0.1:45223 (gRPC, h2c)
//! SayHello #1: OK "hello, palisade"
//! SayHello #2..#5: OK
//! SayHello #6: RESOURCE_EXHAUSTED "rate limited; retry in 24.836274ms", grpc-retry-pushback-ms: 25
//! Fail #1..#3: INTERNAL "failing on purpose"
//! SayHello: UNAVAILABLE "circuit open; retry in 9.998632015s", grpc-retry-pushback-ms: 9999
//! shut down in 790.783µs: 0 request(s) were in flight when the drain began, exit code 0
//! ```
//!
//! The program exits with a failure if any call gets another status than these.
//!
//! The service, `palisade.demo.Greeter`, has two unary methods: `SayHello` answers
//! `{"message": "hello, NAME"}` to `{"name": NAME}`, and `Fail` always answers `INTERNAL`.
//! It is written by hand on `tonic::server::Grpc` with a small JSON codec ([`JsonCodec`]):
//! no `.proto`, no `protoc`, no build script. A real service would use `tonic-prost` and
//! generated code instead; the layers and the adapter stay the same.
//!
//! The layers, outermost first: [`GrpcRejectionLayer`] (this example's adapter, see below),
//! the shutdown layer (every call counted, `ShuttingDown` once draining), a rate limit (5 per
//! second, bursts of 5), a concurrency pool (16 at once, 32 waiting at most 2 s), and a
//! circuit breaker (open for 10 s after 3 failures in a row; a failure is a response whose
//! `grpc-status` says the server is unwell, see [`grpc_failure`]).
//!
//! The error-typed layers fail a refused call with a `BoxError` holding a typed rejection.
//! Handed to the server as is, it would end the HTTP/2 stream without a gRPC status: the
//! client would learn neither why nor when to come back. The adapter turns the rejection into
//! a trailers-only gRPC response instead:
//!
//! | rejection | gRPC status | HTTP (always) |
//! |---|---|---|
//! | `RateLimited` | `RESOURCE_EXHAUSTED` | 200 |
//! | `Overloaded`, `CircuitOpen`, `ShuttingDown` | `UNAVAILABLE` | 200 |
//!
//! with the rejection's text as `grpc-message` and its retry-after, in whole milliseconds
//! rounded up, as `grpc-retry-pushback-ms`: the header gRPC clients read to delay a retry
//! (`palisade-retry`'s HTTP replay honours it too).
//!
//! Options: `--server` (serve only, until Ctrl-C or SIGTERM), `--addr HOST:PORT` (default
//! `127.0.0.1:50051` with `--server`, an ephemeral port otherwise), `--client URL` (run the
//! client against a server started elsewhere). The client expects a fresh server: run again
//! within 10 s, its first call meets the breaker still open and it stops with
//! `expected ResourceExhausted, got UNAVAILABLE "circuit open; ..."`.

use std::convert::Infallible;
use std::future::IntoFuture;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut};
use futures_util::future::{self, Either, FutureExt, Map, Ready};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::breaker::CircuitBreakerLayer;
use palisade::core::classify::{Outcome, classify_fn};
use palisade::core::reject::{Rejection, RetryAfter};
use palisade::core::{Backoff, BoxError};
use palisade::prelude::*;
use palisade::shutdown::serve;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tower::{Layer, Service, ServiceBuilder};

/// The header gRPC clients read to delay their next attempt, in milliseconds.
const PUSHBACK: &str = "grpc-retry-pushback-ms";
/// The rate limit's burst, which the client exceeds on purpose.
const BURST: u32 = 5;
/// Failures in a row that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;

// ---------------------------------------------------------------------------------------
// The adapter: rejections to gRPC statuses.
// ---------------------------------------------------------------------------------------

/// The gRPC status for an error from the layer stack: a Palisade rejection becomes
/// `RESOURCE_EXHAUSTED` (rate limited) or `UNAVAILABLE` (the others) with a
/// `grpc-retry-pushback-ms`; any other error becomes the `Status` it holds, or `UNKNOWN`.
fn rejection_status(error: BoxError) -> Status {
    let Some(rejection) = Rejection::find(&*error) else {
        return Status::from_error(error);
    };
    let code = match rejection {
        Rejection::RateLimited(_) => Code::ResourceExhausted,
        // `Rejection` is non-exhaustive: a rejection added later is a refusal to serve now.
        _ => Code::Unavailable,
    };
    let mut status = Status::new(code, rejection.as_error().to_string());
    if let Some(delay) = rejection.retry_after() {
        // Rounded up: a client that waits what the header says never comes back early.
        let millis = delay
            .as_millis()
            .saturating_add(u128::from(delay.subsec_nanos() % 1_000_000 > 0));
        let millis = u64::try_from(millis).unwrap_or(u64::MAX);
        status
            .metadata_mut()
            .insert(PUSHBACK, MetadataValue::from(millis));
    }
    status
}

/// Answers the errors of the service it wraps with trailers-only gRPC responses (see
/// [`rejection_status`]), so the server never resets a stream for a refused call.
#[derive(Debug, Clone, Copy, Default)]
struct GrpcRejectionLayer;

impl<S> Layer<S> for GrpcRejectionLayer {
    type Service = GrpcRejection<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcRejection::new(inner)
    }
}

/// The service of [`GrpcRejectionLayer`].
#[derive(Debug)]
struct GrpcRejection<S> {
    inner: S,
    /// The inner service failed `poll_ready` with this: the next `call` answers it without
    /// calling the inner service.
    not_ready: Option<Status>,
}

impl<S> GrpcRejection<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            not_ready: None,
        }
    }
}

impl<S: Clone> Clone for GrpcRejection<S> {
    /// A clone starts unpolled: readiness belongs to the value that was polled.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

type MapResult<E> = fn(Result<Response<Body>, E>) -> Result<Response<Body>, Infallible>;

impl<S, ReqBody> Service<Request<ReqBody>> for GrpcRejection<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Either<Map<S::Future, MapResult<S::Error>>, Ready<Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Palisade's layers refuse in `call`, so this is rare: an inner service that fails
        // readiness gets its error answered as a status by the next `call`.
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                self.not_ready = Some(rejection_status(error.into()));
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if let Some(status) = self.not_ready.take() {
            return Either::Right(future::ready(Ok(status.into_http())));
        }
        Either::Left(self.inner.call(request).map(|result| {
            Ok(result.unwrap_or_else(|error| rejection_status(error.into()).into_http()))
        }))
    }
}

/// Whether a response says the server is unwell, for the circuit breaker: a trailers-only
/// response (an error answered at once, as tonic does for a unary call that fails) whose
/// `grpc-status` is `INTERNAL`, `UNAVAILABLE`, `UNKNOWN`, `DEADLINE_EXCEEDED` or `DATA_LOSS`.
/// Client mistakes (`INVALID_ARGUMENT`, `NOT_FOUND`, ...) say nothing about its health.
fn grpc_failure(response: &Response<Body>) -> bool {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return false;
    };
    matches!(
        status.code(),
        Code::Internal
            | Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::DataLoss
    )
}

// ---------------------------------------------------------------------------------------
// The service: a hand-written unary gRPC service with a JSON codec.
// ---------------------------------------------------------------------------------------

/// `SayHello`'s request.
#[derive(Debug, Serialize, Deserialize)]
struct HelloRequest {
    name: String,
}

/// `SayHello`'s response.
#[derive(Debug, Serialize, Deserialize)]
struct HelloReply {
    message: String,
}

/// A gRPC codec that carries messages as JSON: encodes `E`, decodes `D`.
#[derive(Debug)]
struct JsonCodec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for JsonCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E, D> Codec for JsonCodec<E, D>
where
    E: Serialize + Send + 'static,
    D: DeserializeOwned + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = JsonEncoder<E>;
    type Decoder = JsonDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        JsonEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        JsonDecoder(PhantomData)
    }
}

/// [`JsonCodec`]'s encoder.
#[derive(Debug)]
struct JsonEncoder<E>(PhantomData<fn(E)>);

impl<E: Serialize> Encoder for JsonEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        serde_json::to_writer(dst.writer(), &item)
            .map_err(|error| Status::internal(format!("cannot encode the message: {error}")))
    }
}

/// [`JsonCodec`]'s decoder.
#[derive(Debug)]
struct JsonDecoder<D>(PhantomData<fn() -> D>);

impl<D: DeserializeOwned> Decoder for JsonDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        serde_json::from_reader(src.reader())
            .map(Some)
            .map_err(|error| {
                Status::invalid_argument(format!("cannot decode the message: {error}"))
            })
    }
}

/// `palisade.demo.Greeter`: routes by path to its two unary methods.
#[derive(Debug, Clone, Copy, Default)]
struct Greeter;

impl<B> Service<Request<B>> for Greeter
where
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match request.uri().path() {
            "/palisade.demo.Greeter/SayHello" => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(JsonCodec::<HelloReply, HelloRequest>::default());
                let say_hello =
                    tower::service_fn(|request: tonic::Request<HelloRequest>| async move {
                        let name = request.into_inner().name;
                        Ok::<_, Status>(tonic::Response::new(HelloReply {
                            message: format!("hello, {name}"),
                        }))
                    });
                Ok(grpc.unary(say_hello, request).await)
            }),
            "/palisade.demo.Greeter/Fail" => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(JsonCodec::<HelloReply, HelloRequest>::default());
                let fail = tower::service_fn(|_: tonic::Request<HelloRequest>| async {
                    Err::<tonic::Response<HelloReply>, _>(Status::internal("failing on purpose"))
                });
                Ok(grpc.unary(fail, request).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The program.
// ---------------------------------------------------------------------------------------

/// What went wrong.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}\n\nusage: tonic_server [--server] [--addr HOST:PORT] [--client URL]")]
    Usage(String),
    #[error(
        "a gRPC server behind Palisade's layers, and a client\n\nusage: tonic_server [--server] [--addr HOST:PORT] [--client URL]"
    )]
    Help,
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("shutdown: {0}")]
    Shutdown(#[from] palisade::shutdown::RunError),
    #[error("the client expected {expected:?}, got {got}")]
    Unexpected { expected: Code, got: String },
}

/// What to run.
#[derive(Debug)]
enum Mode {
    /// Server and client in one process.
    Both,
    /// Only the server, until a signal.
    Server,
    /// Only the client, against this server.
    Client(Uri),
}

fn parse_args() -> Result<(Mode, Option<SocketAddr>), Error> {
    let mut mode = Mode::Both;
    let mut addr = None;
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let mut value = |name: &str| {
            argv.next()
                .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--server" => mode = Mode::Server,
            "--addr" => {
                let text = value("--addr")?;
                addr = Some(
                    text.parse()
                        .map_err(|error| Error::Usage(format!("--addr {text:?}: {error}")))?,
                );
            }
            "--client" => {
                let text = value("--client")?;
                mode = Mode::Client(
                    text.parse()
                        .map_err(|error| Error::Usage(format!("--client {text:?}: {error}")))?,
                );
            }
            "-h" | "--help" => return Err(Error::Help),
            other => return Err(Error::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok((mode, addr))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(Error::Help) => {
            println!("{}", Error::Help);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tonic_server: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, Error> {
    let (mode, addr) = parse_args()?;
    if let Mode::Client(origin) = mode {
        client(origin).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let serve_only = matches!(mode, Mode::Server);
    let mut shutdown = Shutdown::builder().drain_deadline(Duration::from_secs(10));
    if serve_only {
        // SIGTERM or Ctrl-C starts the drain; a second one forces the stop.
        shutdown = shutdown.on_signals();
    }
    let shutdown = shutdown.build();
    let default_addr = if serve_only {
        SocketAddr::from(([127, 0, 0, 1], 50051))
    } else {
        SocketAddr::from(([127, 0, 0, 1], 0))
    };
    let addr = addr.unwrap_or(default_addr);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    println!("listening on http://{addr} (gRPC, h2c)");

    let server = tokio::spawn(serve(listener, layered(&shutdown)?, &shutdown).into_future());
    let outcome = if serve_only {
        Ok(())
    } else {
        let origin = Uri::try_from(format!("http://{addr}"))
            .map_err(|error| Error::Config(error.to_string()))?;
        let outcome = client(origin).await;
        shutdown.trigger();
        outcome
    };
    let report = shutdown.run().await?;
    if let Err(error) = server.await {
        eprintln!("tonic_server: the server task failed: {error}");
    }
    println!(
        "shut down in {:?}: {} request(s) were in flight when the drain began, exit code {}",
        report.elapsed,
        report.requests_at_drain,
        report.code()
    );
    outcome?;
    Ok(report.exit_code())
}

/// The greeter behind the full stack, the adapter outermost.
fn layered(
    shutdown: &Shutdown,
) -> Result<
    impl Service<
        Request<hyper::body::Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static,
    Error,
> {
    let one = NonZeroU32::MIN;
    let burst = NonZeroU32::new(BURST).unwrap_or(one);
    let breaker = CircuitBreakerLayer::with_classifier(
        CircuitBreakerConfig::builder()
            .name("greeter")
            .consecutive_failures(NonZeroU32::new(FAILURES_TO_OPEN).unwrap_or(one))
            .open_wait(Backoff::constant(Duration::from_secs(10)))
            .build()
            .map_err(|error| Error::Config(error.to_string()))?,
        classify_fn(
            |result: Result<&Response<Body>, &Infallible>, _elapsed: Duration| match result {
                Ok(response) if grpc_failure(response) => Outcome::Failure,
                _ => Outcome::Success,
            },
        ),
    );
    let pool = PoolConfig::builder(NonZeroU32::new(16).unwrap_or(one))
        .queue_capacity(32)
        .queue_timeout(Duration::from_secs(2))
        .name("greeter")
        .build()
        .map_err(|error| Error::Config(error.to_string()))?;
    Ok(ServiceBuilder::new()
        .layer(GrpcRejectionLayer)
        .shutdown(shutdown)
        .rate_limiter(Quota::per_second(burst).allow_burst(burst))
        .concurrency_pool(pool)
        .layer(breaker)
        .service(Greeter))
}

/// Calls the server: `BURST + 1` greetings back to back (the last one is rate limited), then,
/// once the limit has refilled, `Fail` until the breaker opens and one greeting more.
async fn client(origin: Uri) -> Result<(), Error> {
    // gRPC over cleartext HTTP/2 (h2c), with prior knowledge.
    let http = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let mut grpc = tonic::client::Grpc::with_origin(http, origin);

    // Back to back until refused: a burst of `BURST`, plus what refilled meanwhile.
    let mut n = 0;
    let refused = loop {
        n += 1;
        match say_hello(&mut grpc).await {
            Ok(message) if n == 1 => println!("SayHello #1: OK {message:?}"),
            Ok(_) if n < 4 * BURST => {}
            Ok(message) => {
                return Err(Error::Unexpected {
                    expected: Code::ResourceExhausted,
                    got: format!("OK {message:?} {n} times in a row"),
                });
            }
            Err(status) => break status,
        }
    };
    expect(Code::ResourceExhausted, &refused)?;
    if n > 2 {
        println!("SayHello #2..#{}: OK", n - 1);
    }
    println!("SayHello #{n}: {}", describe(&refused));

    // A full burst again, for the calls below.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 1..=FAILURES_TO_OPEN {
        let status = call(&mut grpc, "/palisade.demo.Greeter/Fail")
            .await
            .err()
            .unwrap_or_else(|| Status::ok(""));
        expect(Code::Internal, &status)?;
        if n == FAILURES_TO_OPEN {
            println!("Fail #1..#{FAILURES_TO_OPEN}: {}", describe(&status));
        }
    }
    match say_hello(&mut grpc).await {
        Ok(message) => Err(Error::Unexpected {
            expected: Code::Unavailable,
            got: format!("OK {message:?}"),
        }),
        Err(status) => {
            expect(Code::Unavailable, &status)?;
            println!("SayHello: {}", describe(&status));
            Ok(())
        }
    }
}

type GrpcClient = tonic::client::Grpc<
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
>;

/// One `SayHello`; its reply's message.
async fn say_hello(grpc: &mut GrpcClient) -> Result<String, Status> {
    call(grpc, "/palisade.demo.Greeter/SayHello").await
}

/// One unary call of `path` with `{"name": "palisade"}`; the reply's message.
async fn call(grpc: &mut GrpcClient, path: &'static str) -> Result<String, Status> {
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(format!("not ready: {error}")))?;
    let reply = grpc
        .unary(
            tonic::Request::new(HelloRequest {
                name: "palisade".into(),
            }),
            http::uri::PathAndQuery::from_static(path),
            JsonCodec::<HelloRequest, HelloReply>::default(),
        )
        .await?;
    Ok(reply.into_inner().message)
}

/// Fails unless `status` has `code`.
fn expect(code: Code, status: &Status) -> Result<(), Error> {
    if status.code() == code {
        Ok(())
    } else {
        Err(Error::Unexpected {
            expected: code,
            got: describe(status),
        })
    }
}

/// `CODE "message", grpc-retry-pushback-ms: N`.
fn describe(status: &Status) -> String {
    let code = format!("{:?}", status.code());
    let mut text = format!("{} {:?}", screaming(&code), status.message());
    if let Some(pushback) = status.metadata().get(PUSHBACK) {
        let value = pushback.to_str().unwrap_or("(not text)");
        text.push_str(&format!(", {PUSHBACK}: {value}"));
    }
    text
}

/// `ResourceExhausted` as `RESOURCE_EXHAUSTED`, the name gRPC uses.
fn screaming(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
