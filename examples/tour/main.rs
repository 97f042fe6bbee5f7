//! The Palisade tour: the whole suite at work in one program, on embedded defaults only (no
//! server to install; SQLite files and uploads go to temporary directories, every server is
//! in-process on loopback).
//!
//! ```sh
//! cargo run --release --example tour
//! ```
//!
//! In order, it shows:
//!
//! 1. **A gateway under load.** An axum gateway behind the full server stack (shutdown
//!    tracking, a per-client rate limit, a priority concurrency pool, a circuit breaker; every
//!    refusal a `429`/`503` with `Retry-After`) calls a flaky upstream through a client stack
//!    (retries with a budget, a pause when the upstream answers `429`, a rate budget, a
//!    breaker). For 9 seconds four clients send about 360 requests a second while the
//!    upstream goes through an outage and a throttling spell; a row per second shows the
//!    answers by status, both breakers' states and the pool's peaks.
//! 2. **The job queue** on SQLite: a job that fails once and succeeds on its retry, one that
//!    lands in the dead-letter queue.
//! 3. **The event bus**: one failing handler, isolated and reported.
//! 4. **A resumable upload** (tus): cut after three chunks, resumed, SHA-256 verified.
//! 5. **Fenced locks**: contention on one key with increasing tokens, and a stalled holder's
//!    late write refused.
//! 6. **A WebSocket reconnect**: messages sent while disconnected are delivered afterwards.
//! 7. **A CSV pipeline**: quoted fields, and a bad row reported with its line.
//! 8. **A graceful shutdown** of the gateway with requests in flight: nothing dropped.
//!
//! It ends with a summary and writes `target/tour/report.html` with the load timeline as
//! inline SVG charts. Every number printed is measured. The exit code is the shutdown's
//! (0 when clean); a failed step prints what went wrong and exits with 1.

mod drain;
mod error;
mod event_bus;
mod gateway;
mod jobs;
mod load;
mod locks;
mod pipeline;
mod report;
mod telemetry;
mod upload;
mod upstream;
mod websocket;

use std::process::ExitCode;
use std::time::Instant;

use crate::error::TourError;
use crate::gateway::Gateway;
use crate::upstream::{SCRIPT, Upstream};

#[tokio::main]
async fn main() -> ExitCode {
    match tour().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("\ntour failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn tour() -> Result<ExitCode, TourError> {
    let started = Instant::now();
    let mut summary: Vec<(&str, String)> = Vec::new();

    heading(1, "A gateway under load");
    let upstream = Upstream::start().await?;
    let gateway = Gateway::start(upstream.addr()).await?;
    println!(
        "  gateway on {}, upstream on {}; the upstream's script: {}",
        gateway.addr,
        upstream.addr(),
        script()
    );
    let load = load::run(&gateway, &upstream).await?;
    summary.push(("gateway under load", load.summary()));

    heading(2, "Job queue on SQLite: a retry and a dead letter");
    summary.push(("job queue", jobs::run().await?));

    heading(3, "Event bus: a failing handler, isolated");
    summary.push(("event bus", event_bus::run().await?));

    heading(4, "Resumable upload (tus): interrupted, then resumed");
    summary.push(("upload", upload::run().await?));

    heading(5, "Fenced locks: contention and a late write");
    summary.push(("locks", locks::run().await?));

    heading(
        6,
        "WebSocket: a dropped connection, buffered messages delivered",
    );
    summary.push(("websocket", websocket::run().await?));

    heading(7, "CSV pipeline: quoted fields and a bad row");
    summary.push(("csv pipeline", pipeline::run().await?));

    heading(8, "Graceful shutdown of the gateway, requests in flight");
    let drained = drain::run(gateway, &upstream).await?;
    summary.push(("graceful shutdown", drained.summary));

    let took = started.elapsed();
    println!("\nSummary ({:.1} s)", took.as_secs_f64());
    for (section, line) in &summary {
        println!("  {section:<19} {line}");
    }
    let path = report::write(&load, &summary, took)?;
    println!("\nreport: {}", path.display());
    if drained.report.code() != 0 {
        eprintln!("the shutdown was not clean: {:?}", drained.report);
    }
    Ok(drained.report.exit_code())
}

fn heading(number: u32, title: &str) {
    println!("\n── {number}. {title} ──");
}

/// The upstream's script, as one line.
fn script() -> String {
    SCRIPT
        .iter()
        .enumerate()
        .map(|(index, phase)| {
            let until = SCRIPT
                .get(index + 1)
                .map_or(load::LOAD_DURATION.as_secs_f64(), |next| next.from);
            let what = if phase.throttled {
                "429 + Retry-After: 1".to_owned()
            } else {
                format!("{:.0} % 500s", phase.failure_share * 100.0)
            };
            format!("{}–{} s {} ({what})", phase.from, until, phase.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
