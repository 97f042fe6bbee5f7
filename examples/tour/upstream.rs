//! The flaky upstream: an in-process axum server on loopback that the gateway calls.
//!
//! It follows a fixed script over the load phase (healthy, an outage where most calls fail,
//! recovery, a short spell of `429 Too Many Requests` + `Retry-After`, healthy again), and
//! draws its latency and its failures from a seeded generator, so two runs behave alike
//! while every answer is still a real HTTP response over a real socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use palisade_examples::SplitMix64;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::error::{Context, TourError};

/// The seed of the upstream's generator: a fixed one, so runs are comparable.
const SEED: u64 = 0x5EED_2026;

/// One stretch of the upstream's script.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phase {
    /// Seconds into the load when the phase begins.
    pub(crate) from: f64,
    /// A short name for tables and charts.
    pub(crate) name: &'static str,
    /// The share of calls answered `500`.
    pub(crate) failure_share: f64,
    /// Whether every call is answered `429` + `Retry-After: 1`.
    pub(crate) throttled: bool,
}

/// The script, in order. Before the load starts (and after it) the upstream is healthy.
pub(crate) const SCRIPT: [Phase; 5] = [
    Phase {
        from: 0.0,
        name: "healthy",
        failure_share: 0.02,
        throttled: false,
    },
    Phase {
        from: 2.0,
        name: "outage",
        failure_share: 0.9,
        throttled: false,
    },
    Phase {
        from: 4.5,
        name: "recovered",
        failure_share: 0.02,
        throttled: false,
    },
    Phase {
        from: 6.5,
        name: "throttling",
        failure_share: 0.0,
        throttled: true,
    },
    Phase {
        from: 6.8,
        name: "healthy",
        failure_share: 0.02,
        throttled: false,
    },
];

/// What the upstream answered, counted as it answers.
#[derive(Debug, Default)]
pub(crate) struct UpstreamStats {
    /// `200`s.
    pub(crate) ok: AtomicU64,
    /// `500`s.
    pub(crate) failed: AtomicU64,
    /// `429`s.
    pub(crate) throttled: AtomicU64,
}

/// The running upstream server.
#[derive(Debug)]
pub(crate) struct Upstream {
    addr: SocketAddr,
    state: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    started: OnceLock<Instant>,
    rng: Mutex<SplitMix64>,
    stats: UpstreamStats,
}

impl Upstream {
    /// Binds a loopback port and serves.
    pub(crate) async fn start() -> Result<Self, TourError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the upstream's port")?;
        let addr = listener
            .local_addr()
            .context("reading the upstream's address")?;
        let state = Arc::new(Shared {
            started: OnceLock::new(),
            rng: Mutex::new(SplitMix64::new(SEED)),
            stats: UpstreamStats::default(),
        });
        let app = Router::new()
            .route("/price/{symbol}", get(price))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let listener = listener.tap_io(|tcp| {
                // Answers go out at once, not after the client's delayed ACK.
                let _ = tcp.set_nodelay(true);
            });
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("upstream server stopped: {error}");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the script's clock: phase times count from `at`.
    pub(crate) fn start_script(&self, at: Instant) {
        // A second start keeps the first: the script runs once.
        let _ = self.state.started.set(at);
    }

    /// What it answered so far.
    pub(crate) fn stats(&self) -> &UpstreamStats {
        &self.state.stats
    }

    /// A handle that stops the server (and drops its connections) when aborted.
    pub(crate) fn abort_handle(&self) -> AbortHandle {
        self.task.abort_handle()
    }
}

/// The phase at `elapsed` into the script; healthy outside it.
pub(crate) fn phase_at(elapsed: Duration, script_len: Duration) -> Phase {
    if elapsed >= script_len {
        return SCRIPT[0];
    }
    let seconds = elapsed.as_secs_f64();
    SCRIPT
        .iter()
        .rev()
        .find(|phase| seconds >= phase.from)
        .copied()
        .unwrap_or(SCRIPT[0])
}

/// `GET /price/{symbol}`: a price after a few milliseconds, or a failure the script asks for.
async fn price(State(state): State<Arc<Shared>>, Path(symbol): Path<String>) -> Response {
    let phase = state.started.get().map_or(SCRIPT[0], |started| {
        phase_at(started.elapsed(), crate::load::LOAD_DURATION)
    });
    let (latency_ms, roll, cents) = {
        let mut rng = state.rng.lock().unwrap_or_else(PoisonError::into_inner);
        (
            2 + rng.next_u64() % 10,
            rng.unit(),
            10_000 + rng.next_u64() % 5_000,
        )
    };
    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    if phase.throttled {
        state.stats.throttled.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "slow down",
        )
            .into_response();
    }
    if roll < phase.failure_share {
        state.stats.failed.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::INTERNAL_SERVER_ERROR, "price engine failed").into_response();
    }
    state.stats.ok.fetch_add(1, Ordering::Relaxed);
    format!(
        "{{\"symbol\":\"{symbol}\",\"price\":{}.{:02}}}",
        cents / 100,
        cents % 100
    )
    .into_response()
}
