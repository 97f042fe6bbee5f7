//! A fixed-work driver for measuring an uncontended acquire + release pair on Redis, beside
//! the floor of the `lock` bench (`SET NX PX`, then a compare-and-delete Lua script, on one
//! multiplexed connection). It starts a private `redis-server` (or uses `REDIS_URL`).
//!
//! ```sh
//! # client instructions per pair: run twice with different counts and take the difference
//! cargo build --release -p palisade-lock --all-features --example redis_pair_probe
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*' \
//!     target/release/examples/redis_pair_probe lock 300
//! # pairs per second, ours and the floor's in alternating blocks, for 10 rounds
//! target/release/examples/redis_pair_probe rate 10 2000
//! ```
//!
//! Modes: `raw N` and `lock N` make N pairs (after 50 unmeasured ones) inside the functions
//! `measured_raw` and `measured_lock`, so callgrind can collect just those; `rate ROUNDS PAIRS` alternates blocks of
//! PAIRS floor pairs and PAIRS palisade pairs and prints each block's pairs per second, the
//! ratio per round, the median ratio and the overall rates (and the server's time per
//! command); `sizes` prints the sizes of the acquire and release futures. Everything runs
//! on one current-thread runtime, as in the bench.

use std::hint::black_box;
use std::time::{Duration, Instant};

use palisade_lock::{Lock, RedisBackend};
use palisade_testkit::RedisServer;
use redis::Script;
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(30);
const KEY: &str = "bench";
const WARM_UP: u64 = 50;

/// The floor's release: compare-and-delete.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

struct Floor {
    connection: MultiplexedConnection,
    release: Script,
}

impl Floor {
    async fn pairs(&mut self, from: u64, count: u64) {
        for n in from..from + count {
            // A fresh owner value per pair, as a real client needs (as in the bench).
            let value = format!("{n:032x}");
            let set: Option<String> = redis::cmd("SET")
                .arg(KEY)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .query_async(&mut self.connection)
                .await
                .expect("SET");
            assert!(set.is_some(), "the key was free");
            let deleted: u8 = self
                .release
                .key(KEY)
                .arg(&value)
                .invoke_async(&mut self.connection)
                .await
                .expect("release");
            assert_eq!(deleted, 1);
        }
    }
}

async fn lock_pairs(lock: &Lock<RedisBackend>, count: u64) {
    for _ in 0..count {
        let guard = lock
            .acquire(KEY, TTL, Duration::ZERO)
            .await
            .expect("acquire");
        black_box(guard.token());
        guard.release().await.expect("release");
    }
}

#[inline(never)]
fn measured_raw(runtime: &Runtime, floor: &mut Floor, count: u64) {
    runtime.block_on(floor.pairs(WARM_UP, count));
}

#[inline(never)]
fn measured_lock(runtime: &Runtime, lock: &Lock<RedisBackend>, count: u64) {
    runtime.block_on(lock_pairs(lock, count));
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "rate".to_owned());
    let first: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    let second: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(2000);

    let Some(server) = RedisServer::start_or_skip() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let client = redis::Client::open(server.url()).expect("a redis url");
    let connection = runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("a connection");
    let mut floor = Floor {
        connection,
        release: Script::new(RELEASE),
    };
    let lock = Lock::new(RedisBackend::open(server.url()).expect("a redis url"));
    runtime.block_on(floor.pairs(0, WARM_UP));
    runtime.block_on(lock_pairs(&lock, WARM_UP));

    if mode == "sizes" {
        runtime.block_on(async {
            let acquire = lock.acquire(KEY, TTL, Duration::ZERO);
            eprintln!("acquire future: {} bytes", std::mem::size_of_val(&acquire));
            let guard = acquire.await.unwrap();
            let release = guard.release();
            eprintln!("release future: {} bytes", std::mem::size_of_val(&release));
            release.await.unwrap();
        });
        return;
    }
    match mode.as_str() {
        "raw" => measured_raw(&runtime, &mut floor, first),
        "lock" => measured_lock(&runtime, &lock, first),
        "rate" => {
            let (rounds, pairs) = (first, second);
            let mut ratios = Vec::new();
            let (mut raw_time, mut our_time) = (Duration::ZERO, Duration::ZERO);
            let mut next = WARM_UP;
            for round in 0..rounds {
                let started = Instant::now();
                runtime.block_on(floor.pairs(next, pairs));
                raw_time += started.elapsed();
                let raw = pairs as f64 / started.elapsed().as_secs_f64();
                next += pairs;
                let started = Instant::now();
                runtime.block_on(lock_pairs(&lock, pairs));
                our_time += started.elapsed();
                let ours = pairs as f64 / started.elapsed().as_secs_f64();
                let ratio = ours / raw;
                ratios.push(ratio);
                println!(
                    "round {round:2}: floor {raw:8.0} pairs/s, palisade {ours:8.0} pairs/s, {:5.1} %",
                    ratio * 100.0
                );
            }
            let total = (rounds * pairs) as f64;
            println!(
                "median of {rounds} rounds: {:.1} % of the floor; overall: floor {:.0} pairs/s, \
                 palisade {:.0} pairs/s, {:.1} %",
                median(&mut ratios) * 100.0,
                total / raw_time.as_secs_f64(),
                total / our_time.as_secs_f64(),
                raw_time.as_secs_f64() / our_time.as_secs_f64() * 100.0,
            );
            // The server's side: time per command (scripts include the commands they call).
            let info: String = runtime
                .block_on(
                    redis::cmd("INFO")
                        .arg("commandstats")
                        .query_async(&mut floor.connection),
                )
                .expect("INFO");
            for line in info.lines().filter(|line| line.starts_with("cmdstat_")) {
                println!("{line}");
            }
        }
        other => eprintln!("unknown mode {other:?}: raw N | lock N | rate ROUNDS PAIRS | sizes"),
    }
    drop(server);
}
