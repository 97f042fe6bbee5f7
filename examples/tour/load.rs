//! The load driver: four clients call the gateway at steady rates while the upstream goes
//! through its script, and one row per second says what they got back.
//!
//! The driver is open-loop (requests leave on schedule whatever the answers), so a slow
//! gateway shows up as queueing and shedding rather than as fewer requests. Responses are
//! counted in the second they complete; breaker states come from the breakers' listeners,
//! pool peaks from the pool's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use palisade::breaker::State;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::{Context, TourError};
use crate::gateway::Gateway;
use crate::telemetry::{Breaker, Transition};
use crate::upstream::{self, Upstream};

/// How long the load runs (and the upstream's script with it).
pub(crate) const LOAD_DURATION: Duration = Duration::from_secs(9);

/// A client of the gateway: its `x-client` key, its rate and its `x-priority`.
#[derive(Debug, Clone, Copy)]
struct Profile {
    name: &'static str,
    per_second: u32,
    priority: u8,
}

/// Who calls the gateway. The importer sends more than its per-client quota.
const CLIENTS: [Profile; 4] = [
    Profile {
        name: "web",
        per_second: 80,
        priority: 1,
    },
    Profile {
        name: "mobile",
        per_second: 80,
        priority: 1,
    },
    Profile {
        name: "partner",
        per_second: 40,
        priority: 3,
    },
    Profile {
        name: "importer",
        per_second: 160,
        priority: 8,
    },
];

const SYMBOLS: [&str; 5] = ["ACME", "GLOBX", "INITECH", "UMBRL", "WONKA"];

/// The answers of one second (or of the stragglers after the last one).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Requests sent.
    pub(crate) sent: u64,
    /// `2xx` answers.
    pub(crate) ok: u64,
    /// `429` answers.
    pub(crate) limited: u64,
    /// `503` answers.
    pub(crate) unavailable: u64,
    /// Other answers (`502` when the upstream failed after the retries).
    pub(crate) failed: u64,
    /// Requests that got no answer (connection errors).
    pub(crate) errors: u64,
}

impl Counts {
    /// Answers and errors: requests that completed.
    pub(crate) fn done(&self) -> u64 {
        self.ok + self.limited + self.unavailable + self.failed + self.errors
    }

    fn add(&mut self, other: &Counts) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.limited += other.limited;
        self.unavailable += other.unavailable;
        self.failed += other.failed;
        self.errors += other.errors;
    }

    fn record(&mut self, outcome: Result<StatusCode, ()>) {
        match outcome {
            Ok(status) if status.is_success() => self.ok += 1,
            Ok(StatusCode::TOO_MANY_REQUESTS) => self.limited += 1,
            Ok(StatusCode::SERVICE_UNAVAILABLE) => self.unavailable += 1,
            Ok(_) => self.failed += 1,
            Err(()) => self.errors += 1,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub(crate) struct Second {
    /// What completed in this second.
    pub(crate) counts: Counts,
    /// The upstream's scripted phase at the start of the second.
    pub(crate) phase: &'static str,
    /// Each breaker's states through the second: where it began, then every state entered.
    pub(crate) gateway_states: Vec<State>,
    /// The upstream breaker's states through the second.
    pub(crate) upstream_states: Vec<State>,
    /// The pool's highest in-flight count in the second.
    pub(crate) peak_in_flight: u32,
    /// The pool's longest queue in the second.
    pub(crate) peak_queued: usize,
}

/// What the load phase measured.
#[derive(Debug, Clone)]
pub(crate) struct LoadReport {
    /// One entry per second.
    pub(crate) seconds: Vec<Second>,
    /// Answers that completed after the last second (requests sent near its end).
    pub(crate) stragglers: Counts,
    /// Every breaker transition, timed from the start.
    pub(crate) transitions: Vec<Transition>,
    /// Requests the per-client limit refused (its listener).
    pub(crate) limited: u64,
    /// Requests the pool shed (its listener).
    pub(crate) shed: u64,
    /// Requests each breaker refused (gateway, upstream).
    pub(crate) breaker_rejections: [u64; 2],
    /// Retries of upstream calls, and retries the budget refused.
    pub(crate) retries: (u64, u64),
    /// The upstream's answers: 200, 500, 429.
    pub(crate) upstream: (u64, u64, u64),
}

impl LoadReport {
    /// Every answer of the run.
    pub(crate) fn totals(&self) -> Counts {
        let mut total = self.stragglers;
        for second in &self.seconds {
            total.add(&second.counts);
        }
        total
    }

    /// How many times breaker `which` opened.
    pub(crate) fn opened(&self, which: Breaker) -> usize {
        self.transitions
            .iter()
            .filter(|t| t.breaker == which && t.to == State::Open)
            .count()
    }

    /// The summary line.
    pub(crate) fn summary(&self) -> String {
        let total = self.totals();
        format!(
            "{} requests in {} s: {} 2xx, {} 429, {} 503, {} other; breakers opened {}× (gateway) / {}× (upstream); {} retries ({} refused by the budget); pool shed {}",
            total.sent,
            LOAD_DURATION.as_secs(),
            total.ok,
            total.limited,
            total.unavailable,
            total.failed + total.errors,
            self.opened(Breaker::Gateway),
            self.opened(Breaker::Upstream),
            self.retries.0,
            self.retries.1,
            self.shed,
        )
    }
}

/// A response (or its absence), timed from the start of the load.
type Completion = (Duration, Result<StatusCode, ()>);

/// Runs the load for [`LOAD_DURATION`], printing a row per second.
pub(crate) async fn run(gateway: &Gateway, upstream: &Upstream) -> Result<LoadReport, TourError> {
    let client: Client<HttpConnector, Empty<Bytes>> = palisade_examples::http_client();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    let mut requests = JoinSet::new();

    let seconds_total = usize::try_from(LOAD_DURATION.as_secs()).unwrap_or(usize::MAX);
    let mut buckets = vec![Counts::default(); seconds_total];
    let mut stragglers = Counts::default();
    let mut pool_peaks = Vec::with_capacity(seconds_total);
    let mut seconds = Vec::with_capacity(seconds_total);
    let mut sent_by_client = [0_u64; CLIENTS.len()];

    print_header();
    let start = Instant::now();
    upstream.start_script(start);
    gateway.telemetry.start(start);
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sequence = 0_usize;
    while seconds.len() < seconds_total {
        ticks.tick().await;
        let elapsed = start.elapsed();

        // Send what is due by now, client by client.
        if elapsed < LOAD_DURATION {
            let bucket = bucket_of(elapsed, seconds_total);
            for (index, profile) in CLIENTS.iter().enumerate() {
                let due = (elapsed.as_secs_f64() * f64::from(profile.per_second)) as u64;
                while sent_by_client[index] < due {
                    sent_by_client[index] += 1;
                    buckets[bucket].sent += 1;
                    sequence += 1;
                    let request = build_request(gateway.addr, profile, sequence)?;
                    let client = client.clone();
                    let done = done_tx.clone();
                    requests.spawn(async move {
                        let outcome = send(&client, request).await;
                        // The receiver outlives every request: it is dropped after the join.
                        let _ = done.send((start.elapsed(), outcome));
                    });
                }
            }
        }
        // Reap finished request tasks as we go, so the set stays small.
        while requests.try_join_next().is_some() {}

        // At each second's end: the pool's peaks; 50 ms later, its row (by then every
        // response completed within it has been counted).
        let second_end = Duration::from_secs(pool_peaks.len() as u64 + 1);
        if pool_peaks.len() < seconds_total && elapsed >= second_end {
            let pool = &gateway.pool;
            pool_peaks.push(
                gateway
                    .telemetry
                    .take_pool_peaks(pool.in_flight(), pool.queued()),
            );
        }
        let row_due = Duration::from_secs(seconds.len() as u64 + 1) + Duration::from_millis(50);
        if seconds.len() < pool_peaks.len() && elapsed >= row_due {
            drain(&mut done_rx, &mut buckets, &mut stragglers, seconds_total);
            let index = seconds.len();
            let transitions = gateway.telemetry.transitions();
            let second = Second {
                counts: buckets[index],
                phase: upstream::phase_at(Duration::from_secs(index as u64), LOAD_DURATION).name,
                gateway_states: states_in(&transitions, Breaker::Gateway, index),
                upstream_states: states_in(&transitions, Breaker::Upstream, index),
                peak_in_flight: pool_peaks[index].0,
                peak_queued: pool_peaks[index].1,
            };
            print_row(index, &second);
            seconds.push(second);
        }
    }

    // Requests sent near the end may still be running: wait for them (bounded).
    tokio::time::timeout(Duration::from_secs(10), async {
        while requests.join_next().await.is_some() {}
    })
    .await
    .context("waiting for the last load requests")?;
    drop(done_tx);
    drain(&mut done_rx, &mut buckets, &mut stragglers, seconds_total);
    if stragglers.done() > 0 {
        println!(
            "  + {} answer(s) completed after the last second ({} 2xx)",
            stragglers.done(),
            stragglers.ok
        );
    }

    println!(
        "  breakers at the end: gateway {}, upstream {}",
        gateway.breaker.state(),
        gateway.upstream_breaker.state()
    );
    let telemetry = &gateway.telemetry;
    let stats = upstream.stats();
    let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let report = LoadReport {
        seconds,
        stragglers,
        transitions: telemetry.transitions(),
        limited: read(&telemetry.limited),
        shed: read(&telemetry.shed),
        breaker_rejections: [
            read(&telemetry.breaker_rejections[0]),
            read(&telemetry.breaker_rejections[1]),
        ],
        retries: (read(&telemetry.retries), read(&telemetry.budget_exhausted)),
        upstream: (read(&stats.ok), read(&stats.failed), read(&stats.throttled)),
    };
    println!(
        "  layers' own counts: per-client limit refused {}, pool shed {}, breakers refused {} (gateway) / {} (upstream), {} upstream retries ({} refused by the budget)",
        report.limited,
        report.shed,
        report.breaker_rejections[0],
        report.breaker_rejections[1],
        report.retries.0,
        report.retries.1,
    );
    println!(
        "  the upstream answered {} × 200, {} × 500, {} × 429",
        report.upstream.0, report.upstream.1, report.upstream.2
    );
    Ok(report)
}

/// The second `at` falls in; the last one for anything later.
fn bucket_of(at: Duration, seconds: usize) -> usize {
    usize::try_from(at.as_secs())
        .unwrap_or(usize::MAX)
        .min(seconds - 1)
}

/// Moves the completions received so far into their seconds.
fn drain(
    done: &mut mpsc::UnboundedReceiver<Completion>,
    buckets: &mut [Counts],
    stragglers: &mut Counts,
    seconds: usize,
) {
    while let Ok((at, outcome)) = done.try_recv() {
        if at >= LOAD_DURATION {
            stragglers.record(outcome);
        } else {
            buckets[bucket_of(at, seconds)].record(outcome);
        }
    }
}

fn build_request(
    gateway: SocketAddr,
    profile: &Profile,
    sequence: usize,
) -> Result<Request<Empty<Bytes>>, TourError> {
    let symbol = SYMBOLS[sequence % SYMBOLS.len()];
    Request::get(format!("http://{gateway}/quote/{symbol}"))
        .header("x-client", profile.name)
        .header("x-priority", profile.priority.to_string())
        .body(Empty::new())
        .context("building a load request")
}

/// Sends one request and reads its body to the end (the pool's permit lives until then).
async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
) -> Result<StatusCode, ()> {
    let response = client.request(request).await.map_err(drop)?;
    let status = response.status();
    response.into_body().collect().await.map_err(drop)?;
    Ok(status)
}

/// A breaker's state at the start of second `index`, then each state it entered during it.
fn states_in(transitions: &[Transition], which: Breaker, index: usize) -> Vec<State> {
    let from = Duration::from_secs(index as u64);
    let to = from + Duration::from_secs(1);
    let mine = transitions.iter().filter(|t| t.breaker == which);
    let before = mine
        .clone()
        .rfind(|t| t.at < from)
        .map_or(State::Closed, |t| t.to);
    let mut states = vec![before];
    states.extend(mine.filter(|t| t.at >= from && t.at < to).map(|t| t.to));
    states
}

fn print_header() {
    println!(
        "  {:>3} {:<11} {:>5} {:>5} {:>5} {:>5} {:>5}  {:<22} {:<22} {:>9} {:>6}",
        "t",
        "upstream",
        "req/s",
        "2xx",
        "429",
        "503",
        "other",
        "gateway breaker",
        "upstream breaker",
        "in-flight",
        "queued"
    );
}

fn print_row(index: usize, second: &Second) {
    let c = &second.counts;
    println!(
        "  {:>2}s {:<11} {:>5} {:>5} {:>5} {:>5} {:>5}  {:<22} {:<22} {:>9} {:>6}",
        index + 1,
        second.phase,
        c.done(),
        c.ok,
        c.limited,
        c.unavailable,
        c.failed + c.errors,
        chain(&second.gateway_states),
        chain(&second.upstream_states),
        second.peak_in_flight,
        second.peak_queued,
    );
}

/// `closed→open→half_open`, shortened to fit a column.
pub(crate) fn chain(states: &[State]) -> String {
    let names: Vec<&str> = states.iter().map(|s| short(*s)).collect();
    if names.len() <= 4 {
        names.join("→")
    } else {
        format!("{}→…→{}", names[0], names[names.len() - 1])
    }
}

/// A state's short name.
pub(crate) fn short(state: State) -> &'static str {
    match state {
        State::Closed => "closed",
        State::Open => "open",
        State::HalfOpen => "half",
        _ => state.as_str(),
    }
}
