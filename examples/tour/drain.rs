//! The gateway's graceful shutdown: slow requests are in flight (some running, some queued
//! in the pool) when the shutdown is triggered; the server stops accepting, the drain waits
//! for every one of them, a cleanup hook stops the upstream, and the report says what
//! happened, with the exit code the process deserves.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use palisade::shutdown::{Hook, ShutdownReport};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{Context, TourError};
use crate::gateway::{self, Gateway};
use crate::upstream::Upstream;

/// Slow `/report` requests in flight when the shutdown is triggered: more than the pool
/// runs at once, so some are still queued.
const REQUESTS: usize = 24;

/// What the drain section measured.
#[derive(Debug)]
pub(crate) struct Drained {
    /// The coordinator's report.
    pub(crate) report: ShutdownReport,
    /// The summary line.
    pub(crate) summary: String,
}

/// Triggers the gateway's shutdown with requests in flight and waits for it to finish.
pub(crate) async fn run(gateway: Gateway, upstream: &Upstream) -> Result<Drained, TourError> {
    let client = palisade_examples::http_client::<Empty<Bytes>>();
    let mut requests = JoinSet::new();
    for id in 0..REQUESTS {
        let request = Request::get(format!("http://{}/report/{id}", gateway.addr))
            .header("x-client", "back-office")
            .body(Empty::<Bytes>::new())
            .context("building a report request")?;
        let client = client.clone();
        requests.spawn(async move {
            let response = client.request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, palisade::core::BoxError>(status)
        });
    }

    // Wait until every request is inside the gateway (the shutdown layer counts them).
    tokio::time::timeout(Duration::from_secs(5), async {
        while gateway.shutdown.in_flight() < REQUESTS {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .context("waiting for the report requests to reach the gateway")?;
    println!(
        "  {REQUESTS} slow requests ({} ms of work each) in flight: {} running, {} queued in the pool",
        gateway::REPORT_WORK.as_millis(),
        gateway.pool.in_flight(),
        gateway.pool.queued()
    );

    let stop_upstream = upstream.abort_handle();
    gateway
        .shutdown
        .add_hook(Hook::new("stop-upstream", move || async move {
            stop_upstream.abort();
            Ok::<_, Infallible>(())
        }));
    let triggered = Instant::now();
    gateway.shutdown.trigger();
    println!("  shutdown triggered");
    let report = gateway
        .shutdown
        .run()
        .await
        .context("running the gateway's shutdown")?;
    tokio::time::timeout(Duration::from_secs(5), gateway.server)
        .await
        .context("waiting for the server to close its connections")?
        .context("the server task")?;
    let refused = tokio::net::TcpStream::connect(gateway.addr).await.is_err();

    let mut answered = 0;
    let mut lost = Vec::new();
    while let Some(joined) = requests.join_next().await {
        match joined.context("a report request panicked")? {
            Ok(StatusCode::OK) => answered += 1,
            Ok(status) => lost.push(status.to_string()),
            Err(error) => lost.push(error.to_string()),
        }
    }
    println!(
        "  report: {} requests at the drain, {} cancelled, {} abandoned; hooks: {}; took {} ms",
        report.requests_at_drain,
        report.requests_cancelled,
        report.abandoned,
        report
            .hooks
            .iter()
            .map(|hook| format!("{} {}", hook.name, hook.outcome))
            .collect::<Vec<_>>()
            .join(", "),
        report.elapsed.as_millis()
    );
    println!(
        "  {answered}/{REQUESTS} answered 200, all within {} ms of the trigger; new connections {}; exit code {}",
        triggered.elapsed().as_millis(),
        if refused { "refused" } else { "still accepted" },
        report.code()
    );
    if !lost.is_empty() {
        return Err(TourError::check(
            "graceful shutdown",
            format!(
                "{} requests did not get their answer: {}",
                lost.len(),
                lost.join(", ")
            ),
        ));
    }
    let summary = format!(
        "{} requests in flight at the trigger, {answered}/{REQUESTS} answered, {} cancelled; drained in {} ms; exit code {}",
        report.requests_at_drain,
        report.requests_cancelled,
        report.elapsed.as_millis(),
        report.code()
    );
    Ok(Drained { report, summary })
}
