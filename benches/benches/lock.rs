//! Distributed lock round trips against a private `redis-server`: an uncontended acquire +
//! release pair with `palisade-lock` (fencing on: the counter is incremented in the acquire
//! script, and each guard starts its watchdog), beside the floor a hand-written client
//! reaches (`SET NX PX`, then a compare-and-delete Lua script, on one multiplexed
//! connection) and, with the `lock-rslock` feature, beside `rslock` 0.10 on one server (its
//! tokio support turns on redis-rs's TLS, so it has a feature of its own). Then 8 tasks
//! contending for one key.
//!
//! The bench starts `redis-server` on an ephemeral port of 127.0.0.1 (no persistence) and
//! stops it by its pid at the end; with `REDIS_URL` set it uses that server instead. Each
//! sample runs its pairs in sequence on a current-thread tokio runtime, so the numbers are
//! round trips per second on one connection (the floor's and ours use one; rslock keeps its
//! own per server).

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use palisade_lock::{InProcess, Lock, LockConfig, RedisBackend};
use redis::Script;
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;

/// Long enough that no lock expires during a sample.
const TTL: Duration = Duration::from_secs(30);
const KEY: &str = "bench";

/// The floor's release: compare-and-delete.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A private `redis-server`, stopped by its pid when dropped; or `REDIS_URL`.
struct Server {
    url: String,
    child: Option<Child>,
}

impl Server {
    fn start() -> Self {
        if let Some(url) = std::env::var("REDIS_URL")
            .ok()
            .filter(|url| !url.is_empty())
        {
            return Self { url, child: None };
        }
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (or set REDIS_URL)");
        let server = Self {
            url: format!("redis://127.0.0.1:{port}"),
            child: Some(child),
        };
        let started = Instant::now();
        while !pong(port) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

fn pong(port: u16) -> bool {
    let ask = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        stream.write_all(b"PING\r\n")?;
        let mut answer = [0; 7];
        stream.read_exact(&mut answer)?;
        Ok(&answer == b"+PONG\r\n")
    };
    ask().unwrap_or(false)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Our own child, by its pid.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The floor: what a hand-written client does per pair.
async fn raw_pair(connection: &mut MultiplexedConnection, release: &Script, value: &str) {
    let set: Option<String> = redis::cmd("SET")
        .arg(KEY)
        .arg(value)
        .arg("NX")
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(connection)
        .await
        .expect("SET");
    assert!(set.is_some(), "the key was free");
    let deleted: u8 = release
        .key(KEY)
        .arg(value)
        .invoke_async(connection)
        .await
        .expect("release");
    assert_eq!(deleted, 1);
}

fn uncontended(c: &mut Criterion, runtime: &Runtime, url: &str) {
    let mut group = c.benchmark_group("lock/uncontended");
    group.throughput(Throughput::Elements(1));

    let client = redis::Client::open(url).unwrap();
    let mut connection = runtime
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let release = Script::new(RELEASE);
    group.bench_function("raw SET NX PX + Lua release", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for n in 0..iters {
                    // A fresh owner value per pair, as a real client needs.
                    let value = format!("{n:032x}");
                    raw_pair(&mut connection, &release, &value).await;
                }
                started.elapsed()
            })
        });
    });

    let lock = Lock::new(RedisBackend::open(url).unwrap());
    group.bench_function("palisade-lock redis (fenced)", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let guard = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
                    black_box(guard.token());
                    guard.release().await.unwrap();
                }
                started.elapsed()
            })
        });
    });

    #[cfg(feature = "lock-rslock")]
    {
        let manager = rslock::LockManager::new(vec![url.to_owned()]);
        group.bench_function("rslock 0.10", |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let held = manager.lock(KEY, TTL).await.expect("rslock");
                        manager.unlock(&held).await;
                    }
                    started.elapsed()
                })
            });
        });
    }

    let in_process = Lock::in_process();
    group.bench_function("palisade-lock in-process", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let guard = in_process.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
                    black_box(guard.token());
                    guard.release().await.unwrap();
                }
                started.elapsed()
            })
        });
    });
    group.finish();
}

/// 8 tasks taking turns on one key: pairs per second for all of them together.
fn contended(c: &mut Criterion, runtime: &Runtime, url: &str) {
    const TASKS: u64 = 8;
    let mut group = c.benchmark_group("lock/contended 8 tasks");
    group.throughput(Throughput::Elements(1));
    let redis = Lock::builder(RedisBackend::open(url).unwrap())
        .config(LockConfig::new().wait(Duration::from_secs(60)))
        .build();
    group.bench_function("palisade-lock redis (fenced)", |b| {
        b.iter_custom(|iters| runtime.block_on(run_contended(&redis, iters, TASKS)));
    });
    let in_process = Lock::builder(InProcess::new())
        .config(LockConfig::new().wait(Duration::from_secs(60)))
        .build();
    group.bench_function("palisade-lock in-process", |b| {
        b.iter_custom(|iters| runtime.block_on(run_contended(&in_process, iters, TASKS)));
    });
    group.finish();
}

async fn run_contended<B: palisade_lock::Backend>(
    lock: &Lock<B>,
    iters: u64,
    tasks: u64,
) -> Duration {
    let started = Instant::now();
    let mut handles = Vec::new();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for task in 0..tasks {
        let (lock, done) = (lock.clone(), Arc::clone(&done));
        // Split `iters` pairs among the tasks.
        let share = iters / tasks + u64::from(task < iters % tasks);
        handles.push(tokio::spawn(async move {
            for _ in 0..share {
                let guard = lock
                    .acquire(KEY, TTL, Duration::from_secs(60))
                    .await
                    .unwrap();
                black_box(guard.token());
                guard.release().await.unwrap();
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), iters);
    started.elapsed()
}

fn main() {
    let server = Server::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut criterion = Criterion::default().configure_from_args();
    uncontended(&mut criterion, &runtime, &server.url);
    contended(&mut criterion, &runtime, &server.url);
    criterion.final_summary();
    drop(server);
}
