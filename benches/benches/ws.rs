//! WebSocket echo over loopback: `palisade-ws`'s client beside raw tokio-tungstenite (the
//! library it is built on, same version), both against the same in-process echo server, with
//! 32-byte text messages.
//!
//! - `sequential`: one message out, its echo back, then the next: round trips per second.
//!   Ours awaits each send's future (resolved once the frame was written) before reading.
//! - `pipelined`: 10,000 messages out, then 10,000 echoes in, per iteration: messages per
//!   second. Raw feeds all 10,000 into its sink and flushes once; ours queues all 10,000 with
//!   `send` (dropping the futures) and its task writes them in batches.
//!
//! The server runs on its own thread and current-thread runtime; it echoes every frame it has
//! read and flushes once its socket has nothing more to read. Each client runs on a
//! current-thread runtime on the bench thread, with `TCP_NODELAY` on.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use futures_util::{FutureExt, SinkExt, StreamExt};
use palisade_ws::{BufferLimits, Message, OverflowPolicy, Text, WsConfig};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as RawMessage;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Payload;

/// 32 bytes.
const PAYLOAD: &str = "0123456789abcdef0123456789abcdef";
const PIPELINE: usize = 10_000;

/// The echo server, on its own thread; stopped when dropped.
struct EchoServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start() -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = runtime();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let accept = tokio::spawn(async move {
                    while let Ok((socket, _)) = listener.accept().await {
                        socket.set_nodelay(true).unwrap();
                        tokio::spawn(echo(socket));
                    }
                });
                let _ = stopped.await;
                accept.abort();
            });
        });
        Self {
            addr: addr_rx.recv().expect("server address"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Echoes every data frame; flushes once the socket has nothing more to read.
async fn echo(socket: tokio::net::TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            if (message.is_text() || message.is_binary()) && ws.feed(message).await.is_err() {
                return;
            }
            next = match ws.next().now_or_never() {
                Some(Some(Ok(message))) => Some(message),
                Some(_) => return,
                None => None,
            };
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn raw_message() -> RawMessage {
    RawMessage::Text(Utf8Payload::from_static(PAYLOAD))
}

fn our_message() -> Message {
    Message::Text(Text::from_static(PAYLOAD))
}

fn bench_ws(c: &mut Criterion) {
    let server = EchoServer::start();
    let rt = runtime();

    let (mut raw, _) = rt
        .block_on(tokio_tungstenite::connect_async_with_config(
            server.url(),
            None,
            true,
        ))
        .expect("raw client connects");
    let config = WsConfig::builder(server.url())
        .buffer(BufferLimits {
            messages: NonZeroUsize::new(2 * PIPELINE).unwrap(),
            bytes: NonZeroUsize::new(64 << 20).unwrap(),
            policy: OverflowPolicy::RejectNew,
        })
        .receive_capacity(NonZeroUsize::new(2 * PIPELINE).unwrap())
        .build()
        .expect("a valid config");
    let (client, mut messages) = rt.block_on(async {
        let (client, messages) = palisade_ws::connect(config).expect("inside a runtime");
        client.connected().await.expect("palisade client connects");
        (client, messages)
    });

    // Both echo correctly before being measured.
    rt.block_on(async {
        raw.send(raw_message()).await.unwrap();
        let echoed = raw.next().await.unwrap().unwrap();
        assert_eq!(echoed.to_text().unwrap(), PAYLOAD);
        client.send(our_message()).await.unwrap();
        assert_eq!(messages.recv().await.unwrap().as_text(), Some(PAYLOAD));
    });

    let mut group = c.benchmark_group("ws/sequential");
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    raw.send(raw_message()).await.unwrap();
                    raw.next().await.unwrap().unwrap();
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client.send(our_message()).await.unwrap();
                    messages.recv().await.unwrap();
                }
                start.elapsed()
            })
        });
    });
    group.finish();

    let mut group = c.benchmark_group("ws/pipelined");
    group.throughput(Throughput::Elements(PIPELINE as u64));
    group.sample_size(10);
    group.bench_function("raw", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..PIPELINE {
                        raw.feed(raw_message()).await.unwrap();
                    }
                    raw.flush().await.unwrap();
                    for _ in 0..PIPELINE {
                        raw.next().await.unwrap().unwrap();
                    }
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..PIPELINE {
                        // Queued at once; the future only reports the outcome.
                        drop(client.send(our_message()));
                    }
                    for _ in 0..PIPELINE {
                        messages.recv().await.unwrap();
                    }
                }
                start.elapsed()
            })
        });
    });
    group.finish();

    rt.block_on(async {
        let _ = raw.close(None).await;
        client.close().await.expect("closes cleanly");
    });
    assert_eq!(client.stats().dropped, 0, "nothing was dropped");
    drop(server);
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench_ws(&mut criterion);
    criterion.final_summary();
}
