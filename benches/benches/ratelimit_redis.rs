//! The Redis store's cost per check beside the floor: a bare redis-rs `EVALSHA` of the same
//! script on the same kind of connection (a multiplexed tokio connection), one check at a
//! time (latency-bound: ops/s is the inverse of the time per check).
//!
//! Starts its own `redis-server` on an ephemeral port through the testkit (or uses
//! `REDIS_URL`); the testkit stops it when the bench ends. Skips, with a message, when no
//! `redis-server` is installed.

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_ratelimit::{Quota, REDIS_GCRA_SCRIPT, RedisRateLimiter};
use palisade_testkit::RedisServer;

fn redis(c: &mut Criterion) {
    let Some(server) = RedisServer::start_or_skip() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // Large enough that every check is admitted: the cost of a request that goes through.
    let quota = Quota::per_second(NonZeroU32::new(1_000_000).expect("non-zero"));
    let limiter = RedisRateLimiter::builder(server.url(), quota)
        .prefix("bench:")
        .build()
        .expect("a valid URL and quota");
    assert!(
        runtime.block_on(limiter.check("warm-up")).decided_by()
            == palisade_ratelimit::DecidedBy::Redis,
        "the bench's Redis answers"
    );

    let client = redis::Client::open(server.url()).expect("a valid URL");
    let mut connection = runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("connected");
    let sha: String = runtime
        .block_on(
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(REDIS_GCRA_SCRIPT)
                .query_async(&mut connection),
        )
        .expect("script loaded");

    let mut group = c.benchmark_group("ratelimit/redis");
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw-evalsha", |b| {
        b.iter(|| {
            let answer: (u8, u64, u64) = runtime
                .block_on(
                    redis::cmd("EVALSHA")
                        .arg(&sha)
                        .arg(1)
                        .arg("raw:key")
                        .arg(1)
                        .arg(1_000_000)
                        .arg(1)
                        .query_async(&mut connection),
                )
                .expect("an answer");
            black_box(answer)
        });
    });
    group.bench_function("palisade/redis-store", |b| {
        b.iter(|| black_box(runtime.block_on(limiter.check("key")).is_admitted()));
    });
    group.finish();
    assert_eq!(limiter.unavailable_count(), 0, "Redis decided every check");
}

criterion_group!(benches, redis);
criterion_main!(benches);
