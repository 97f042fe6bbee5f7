//! What Palisade's server stack costs under load: the `axum_server` example, bare and behind
//! its full stack, each in a process of its own, loaded over keep-alive HTTP/1 on loopback.
//!
//! ```sh
//! cargo build --release -p palisade-examples --examples
//! cargo run --release -p palisade-examples --example load
//! cargo run --release -p palisade-examples --example load -- --rounds 32 --duration 2
//! # A/A: bare against bare, the method's own spread.
//! cargo run --release -p palisade-examples --example load -- --against bare
//! ```
//!
//! Each round is a pair of runs, one per side, each against a server started for it: the
//! server is warmed up (by the in-process client, for `--warmup` seconds), then
//! `--connections` connections are kept busy for `--duration` seconds, one request after the
//! other on each, and every latency is recorded (1 µs buckets). The pairs alternate their
//! order (bare then full, full then bare, ...) so that drift in the machine's load, and
//! whatever the first or second run of a pair pays, falls on both sides alike; both sides are
//! measured the same way. The full stack runs with limits no request reaches (a rate of
//! 1,000,000 per second per key, a pool of 4,096): nothing is refused, so the comparison is
//! the cost of the layers themselves (every request still goes through the shutdown tracking,
//! a keyed GCRA check, a pool permit and the breaker's window). Refusals, if any, are counted
//! and shown apart.
//!
//! The summary gives, for throughput, p50 and p99, the median of the per-pair ratios (full
//! over bare), an interval that holds that median 90 % of the time (order statistics of the
//! ratios: the fifth smallest to the fifth largest of 16), and the ratio of the pooled
//! figures (requests and seconds added up over the pairs; percentiles of every run's
//! latencies put together). A verdict reads the interval: `met` or `missed` when it lies
//! wholly on one side of the target, `undecided` when it holds the target, which says the run
//! cannot tell the stack from the noise (more `--rounds`, or a quieter machine). One run
//! disturbed by something else on the machine moves one pair, not the median; the pooled p99,
//! shown for reference, is at the mercy of such a run.
//!
//! `--against bare` runs bare against bare (an A/A run): nothing differs, so its ratios'
//! spread is the method's own; run it before reading much into a ratio near the target.
//!
//! The load comes from [`wrk`](https://github.com/wg/wrk) when it is on `PATH` (one request
//! after the other on each connection; a small Lua script prints its latency histogram), else
//! from a small hyper client in this process (`--generator rust` forces it). Either way the
//! generator shares the machine with the server: on a small machine give it few threads
//! (`--threads`, default 1) and run it when nothing else is busy; it prints the load average
//! before and after.
//!
//! With `--pin` (and `wrk` on a machine of two or more CPUs with `taskset` on `PATH`), the
//! two sides are pinned apart: the server runs on the last CPU with one runtime worker
//! (`TOKIO_WORKER_THREADS=1`) and `wrk` on the first, so neither steals the other's core and
//! the throughput ratio is the server's cost per request on one core. Its p99 then mostly
//! shows one thread taking turns among the connections, so it is not the default.
//!
//! Options: `--duration S` (default 1), `--warmup S` (default 0.5, fractions allowed),
//! `--connections N` (default 32), `--rounds N` (pairs of runs, default 16: about 50 seconds
//! in all), `--threads N` (default 1), `--generator wrk|rust` (default `wrk` when installed),
//! `--against full|bare` (default `full`), `--pin`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The target of the issue: the full stack keeps at least this share of bare throughput...
const TARGET_THROUGHPUT: f64 = 0.90;
/// ...and its p99 latency stays within this factor of bare.
const TARGET_P99: f64 = 1.20;
/// How surely the interval a verdict reads holds the median per-pair ratio.
const CONFIDENCE: f64 = 0.90;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    #[error("bare against full-stack throughput and latency\n\n{USAGE}")]
    Help,
    #[error(
        "no server binary at {0}: build the examples first \
         (cargo build --release -p palisade-examples --examples)"
    )]
    NoServer(PathBuf),
    #[error("the server: {0}")]
    Server(String),
    #[error("wrk: {0}")]
    Wrk(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

const USAGE: &str = "usage: load [--duration S] [--warmup S] [--connections N] [--rounds N] \
                     [--threads N] [--generator wrk|rust] [--against full|bare] [--pin]";

/// Printed by `wrk` when it is done: every latency bucket (microseconds) and its count.
/// `latency(i)` is the `i`-th bucket that holds a value, in increasing order; past the last
/// it answers a value that does not increase.
const WRK_HISTOGRAM_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  io.write("histogram-begin\n")
  local i, last = 1, -1
  while true do
    local value, count = latency(i)
    if value <= last or count == 0 then break end
    io.write(string.format("%d %d\n", value, count))
    last = value
    i = i + 1
  end
  io.write("histogram-end\n")
end
"#;

/// What sends the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generator {
    /// `wrk`, a separate process.
    Wrk,
    /// A hyper client on this process's runtime.
    Rust,
}

#[derive(Debug, Clone, Copy)]
struct Args {
    duration: Duration,
    warmup: Duration,
    connections: u32,
    rounds: u32,
    threads: usize,
    generator: Generator,
    /// The CPUs of the server and of `wrk`, when they are pinned apart.
    pin: Option<Pin>,
    /// What runs against bare: the full stack, or bare again (an A/A run).
    against: Mode,
}

/// Where each side runs when they are pinned apart.
#[derive(Debug, Clone, Copy)]
struct Pin {
    server_cpu: usize,
    wrk_cpu: usize,
}

impl Pin {
    /// The last CPU for the server and the first for `wrk`, where there are two or more
    /// and `taskset` runs.
    fn detect() -> Option<Self> {
        let cpus = std::thread::available_parallelism().ok()?.get();
        let taskset = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        (cpus >= 2 && taskset).then_some(Pin {
            server_cpu: cpus - 1,
            wrk_cpu: 0,
        })
    }

    /// `program` under `taskset` on `cpu`.
    fn command(cpu: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("taskset");
        command.arg("--cpu-list").arg(cpu.to_string()).arg(program);
        command
    }
}

impl Args {
    fn parse() -> Result<Self, Error> {
        let mut args = Args {
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(500),
            connections: 32,
            rounds: 16,
            threads: 1,
            generator: if wrk_installed() {
                Generator::Wrk
            } else {
                Generator::Rust
            },
            pin: None,
            against: Mode::Full,
        };
        let mut pin = false;
        let mut argv = std::env::args().skip(1);
        while let Some(arg) = argv.next() {
            let mut value = |name: &str| -> Result<u64, Error> {
                let text = argv
                    .next()
                    .ok_or_else(|| Error::Usage(format!("{name} needs a value")))?;
                match text.parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(Error::Usage(format!("{name} {text:?}: a positive integer"))),
                }
            };
            if arg == "--generator" {
                args.generator = match argv.next().as_deref() {
                    Some("wrk") if wrk_installed() => Generator::Wrk,
                    Some("wrk") => {
                        return Err(Error::Usage("--generator wrk: no wrk on PATH".into()));
                    }
                    Some("rust") => Generator::Rust,
                    other => {
                        return Err(Error::Usage(format!("--generator {other:?}: wrk or rust")));
                    }
                };
                continue;
            }
            if arg == "--against" {
                args.against = match argv.next().as_deref() {
                    Some("full") => Mode::Full,
                    Some("bare") => Mode::Bare,
                    other => {
                        return Err(Error::Usage(format!("--against {other:?}: full or bare")));
                    }
                };
                continue;
            }
            match arg.as_str() {
                "--duration" => args.duration = Duration::from_secs(value("--duration")?),
                "--warmup" => {
                    let text = argv
                        .next()
                        .ok_or_else(|| Error::Usage("--warmup needs a value".into()))?;
                    args.warmup = text
                        .parse::<f64>()
                        .ok()
                        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
                        .ok_or_else(|| {
                            Error::Usage(format!("--warmup {text:?}: seconds, 0 or more"))
                        })?;
                }
                "--connections" => args.connections = saturate(value("--connections")?),
                "--rounds" => args.rounds = saturate(value("--rounds")?),
                "--threads" => {
                    args.threads = usize::try_from(value("--threads")?).unwrap_or(usize::MAX);
                }
                "--pin" => pin = true,
                "-h" | "--help" => return Err(Error::Help),
                other => return Err(Error::Usage(format!("unknown argument {other:?}"))),
            }
        }
        // Only `wrk` runs in a process of its own that can be pinned.
        if pin {
            if args.generator != Generator::Wrk {
                return Err(Error::Usage("--pin needs the wrk generator".into()));
            }
            args.pin = Some(Pin::detect().ok_or_else(|| {
                Error::Usage("--pin needs two or more CPUs and taskset on PATH".into())
            })?);
        }
        Ok(args)
    }
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    Full,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Full => "full stack",
        }
    }

    fn server_args(self) -> &'static [&'static str] {
        match self {
            Mode::Bare => &["--bare"],
            Mode::Full => &["--rate", "1000000", "--pool", "4096"],
        }
    }
}

/// Latencies in 1 µs buckets: microseconds to how many requests took that long.
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: BTreeMap<u64, u64>,
}

impl Histogram {
    fn record(&mut self, micros: u64, count: u64) {
        *self.buckets.entry(micros).or_default() += count;
    }

    fn add(&mut self, other: &Histogram) {
        for (&micros, &count) in &other.buckets {
            self.record(micros, count);
        }
    }

    /// The `p`-th percentile (0 to 100) in milliseconds: the smallest bucket with at least
    /// `p` % of the values at or below it.
    fn percentile_ms(&self, p: f64) -> f64 {
        let total: u64 = self.buckets.values().sum();
        if total == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (&micros, &count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return micros as f64 / 1e3;
            }
        }
        self.buckets
            .last_key_value()
            .map_or(f64::NAN, |(&micros, _)| micros as f64 / 1e3)
    }
}

/// What one load run measured.
#[derive(Debug, Default)]
struct Sample {
    elapsed: Duration,
    /// Latencies of the `2xx` answers, in nanoseconds.
    latencies: Vec<u64>,
    refused_429: u64,
    refused_503: u64,
    other_status: u64,
    errors: u64,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.elapsed = self.elapsed.max(other.elapsed);
        self.latencies.extend(other.latencies);
        self.refused_429 += other.refused_429;
        self.refused_503 += other.refused_503;
        self.other_status += other.other_status;
        self.errors += other.errors;
    }

    /// The round this sample makes.
    fn round(self) -> Round {
        let mut histogram = Histogram::default();
        for nanos in &self.latencies {
            histogram.record(nanos / 1_000, 1);
        }
        Round {
            requests: self.latencies.len() as u64,
            seconds: self.elapsed.as_secs_f64(),
            histogram,
            refused: self.refused_429 + self.refused_503,
            other: self.other_status + self.errors,
        }
    }
}

/// One measured run of one side.
#[derive(Debug, Clone)]
struct Round {
    /// `2xx` answers.
    requests: u64,
    seconds: f64,
    /// The latencies (with `wrk`: of every answer).
    histogram: Histogram,
    /// `429` and `503` answers (with `wrk`: every answer that is not `2xx` or `3xx`).
    refused: u64,
    /// Other statuses, connection and socket errors.
    other: u64,
}

impl Round {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.seconds.max(f64::EPSILON)
    }
}

/// Every run of one side, pooled.
#[derive(Debug, Default)]
struct Totals {
    requests: u64,
    seconds: f64,
    histogram: Histogram,
    refused: u64,
    other: u64,
}

impl Totals {
    fn add(&mut self, round: &Round) {
        self.requests += round.requests;
        self.seconds += round.seconds;
        self.histogram.add(&round.histogram);
        self.refused += round.refused;
        self.other += round.other;
    }

    fn throughput(&self) -> f64 {
        self.requests as f64 / self.seconds.max(f64::EPSILON)
    }
}

/// One figure's ratios (the `against` side over bare): one per pair, and the pooled one.
#[derive(Debug)]
struct Ratios {
    /// Sorted.
    per_pair: Vec<f64>,
    pooled: f64,
}

impl Ratios {
    fn new(pairs: &[(Round, Round)], pooled: f64, of: impl Fn(&Round) -> f64) -> Self {
        let mut per_pair: Vec<f64> = pairs.iter().map(|(bare, b)| of(b) / of(bare)).collect();
        per_pair.sort_unstable_by(f64::total_cmp);
        Ratios { per_pair, pooled }
    }

    fn median(&self) -> f64 {
        let values = &self.per_pair;
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    /// A distribution-free confidence interval of the median per-pair ratio: the `k`-th
    /// smallest and `k`-th largest ratio, with the largest `k` that still covers the median
    /// with probability [`CONFIDENCE`] (the number of ratios below the median is
    /// binomial(n, 1/2)). With too few pairs for that, the smallest and largest ratio. The
    /// bounds and their coverage.
    fn interval(&self) -> (f64, f64, f64) {
        let n = self.per_pair.len();
        if n == 0 {
            return (f64::NAN, f64::NAN, 0.0);
        }
        // P(X <= j) for X ~ binomial(n, 1/2), for j = 0, 1, ...
        let mut below = Vec::with_capacity(n);
        let mut choose = 1.0_f64;
        let mut cumulative = 0.0;
        for j in 0..n {
            cumulative += choose / 2f64.powi(i32::try_from(n).unwrap_or(i32::MAX));
            below.push(cumulative);
            choose = choose * (n - j) as f64 / (j + 1) as f64;
        }
        // [x(k), x(n + 1 - k)] covers the median with probability 1 - 2 P(X <= k - 1).
        let mut k = 1;
        while k < n / 2 && 1.0 - 2.0 * below[k] >= CONFIDENCE {
            k += 1;
        }
        (
            self.per_pair[k - 1],
            self.per_pair[n - k],
            1.0 - 2.0 * below[k - 1],
        )
    }

    /// What the interval says of `target`: met or missed when it lies wholly on one side,
    /// undecided when it holds the target. `higher_is_better` for throughput.
    fn verdict(&self, target: f64, higher_is_better: bool) -> &'static str {
        let (low, high, _) = self.interval();
        let (met, missed) = if higher_is_better {
            (low >= target, high < target)
        } else {
            (high <= target, low > target)
        };
        match (met, missed) {
            (true, _) => "met",
            (_, true) => "missed",
            _ => "undecided",
        }
    }

    /// `median [low .. high] (coverage), pooled P`.
    fn summary(&self) -> String {
        let (low, high, coverage) = self.interval();
        format!(
            "{:.3} [{low:.3} .. {high:.3}] ({:.0} %), pooled {:.3}",
            self.median(),
            coverage * 100.0,
            self.pooled
        )
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Help) => {
            println!("{}", Error::Help);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("load: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let args = Args::parse()?;
    let server = server_binary()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    // `wrk` reads its histogram script from a file; it lives as long as this run.
    let script = match args.generator {
        Generator::Wrk => {
            let mut file = tempfile::Builder::new()
                .prefix("palisade-load-")
                .suffix(".lua")
                .tempfile()?;
            file.write_all(WRK_HISTOGRAM_SCRIPT.as_bytes())?;
            file.flush()?;
            Some(file)
        }
        Generator::Rust => None,
    };
    // Names the second side apart from the first in an A/A run.
    let against = match args.against {
        Mode::Bare => "bare again",
        Mode::Full => Mode::Full.name(),
    };

    println!(
        "load: {} connections, keep-alive HTTP/1 on loopback, {:?} per run after {:?} of warm-up, \
         {} pair(s) of runs in alternating order, {} generator thread(s) of {}",
        args.connections,
        args.duration,
        args.warmup,
        args.rounds,
        args.threads,
        match args.generator {
            Generator::Wrk => "wrk",
            Generator::Rust => "a hyper client in this process",
        }
    );
    if let Some(pin) = args.pin {
        println!(
            "pinned apart: the server on CPU {} with one runtime worker, wrk on CPU {}",
            pin.server_cpu, pin.wrk_cpu
        );
    }
    match args.against {
        Mode::Full => println!(
            "the full stack runs with limits no request reaches (1,000,000 req/s per key, a \
             pool of 4,096): this measures the cost of the layers, not their refusals"
        ),
        Mode::Bare => println!(
            "A/A: bare against bare; the ratios show the method's own spread, nothing else"
        ),
    }
    if let Some(load) = load_average() {
        println!("load average before: {load}");
    }
    println!();
    println!(
        "{:<12} {:>5} {:>10} {:>11} {:>9} {:>9} {:>8} {:>7}",
        "side", "pair", "requests", "req/s", "p50 ms", "p99 ms", "refused", "other"
    );

    let mut pairs: Vec<(Round, Round)> = Vec::new();
    for number in 1..=args.rounds {
        // Bare first in odd pairs, second in even ones.
        let order = if number % 2 == 1 {
            [(true, Mode::Bare), (false, args.against)]
        } else {
            [(false, args.against), (true, Mode::Bare)]
        };
        let mut bare = None;
        let mut other = None;
        for (is_bare, mode) in order {
            let round = match &script {
                Some(script) => measure_with_wrk(&runtime, &server, mode, args, script.path())?,
                None => measure(&runtime, &server, mode, args)?.round(),
            };
            println!(
                "{:<12} {:>5} {:>10} {:>11.0} {:>9.3} {:>9.3} {:>8} {:>7}",
                if is_bare { "bare" } else { against },
                number,
                round.requests,
                round.throughput(),
                round.histogram.percentile_ms(50.0),
                round.histogram.percentile_ms(99.0),
                round.refused,
                round.other,
            );
            if is_bare {
                bare = Some(round);
            } else {
                other = Some(round);
            }
        }
        if let (Some(bare), Some(other)) = (bare, other) {
            pairs.push((bare, other));
        }
    }

    let mut bare = Totals::default();
    let mut other = Totals::default();
    for (a, b) in &pairs {
        bare.add(a);
        other.add(b);
    }
    println!();
    for (name, totals) in [("bare", &bare), (against, &other)] {
        println!(
            "{name:<12} pooled: {:>11.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} refused, {} other",
            totals.throughput(),
            totals.histogram.percentile_ms(50.0),
            totals.histogram.percentile_ms(99.0),
            totals.refused,
            totals.other
        );
    }
    let throughput = Ratios::new(
        &pairs,
        other.throughput() / bare.throughput(),
        Round::throughput,
    );
    let percentile = |p: f64| {
        Ratios::new(
            &pairs,
            other.histogram.percentile_ms(p) / bare.histogram.percentile_ms(p),
            |round| round.histogram.percentile_ms(p),
        )
    };
    let (p50, p99) = (percentile(50.0), percentile(99.0));
    println!();
    println!(
        "{against} / bare over {} pairs: median of the per-pair ratios [the interval holding \
         it with {:.0} % confidence, or all pairs when too few] (its confidence), pooled ratio",
        pairs.len(),
        CONFIDENCE * 100.0
    );
    let verdicts = [
        throughput.verdict(TARGET_THROUGHPUT, true),
        p99.verdict(TARGET_P99, false),
    ];
    println!(
        "  throughput {}; target >= {TARGET_THROUGHPUT:.2}: {}",
        throughput.summary(),
        verdicts[0],
    );
    println!(
        "  p99        {}; target <= {TARGET_P99:.2}: {}",
        p99.summary(),
        verdicts[1],
    );
    println!("  p50        {}", p50.summary());
    if verdicts.contains(&"undecided") {
        println!(
            "undecided: the interval holds the target, so this run cannot tell the stack's cost \
             from the noise (more --rounds, or a quieter machine; --against bare shows the noise)"
        );
    }
    if let Some(load) = load_average() {
        println!("load average after: {load}");
    }
    Ok(())
}

/// `axum_server`, built next to this example.
fn server_binary() -> Result<PathBuf, Error> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(format!("axum_server{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::NoServer(path))
    }
}

/// The 1, 5 and 15 minute load averages, where the system tells them.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The server process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(binary: &Path, mode: Mode, pin: Option<Pin>) -> Result<Self, Error> {
        let mut command = match pin {
            Some(pin) => {
                let mut command = Pin::command(pin.server_cpu, binary);
                command.env("TOKIO_WORKER_THREADS", "1");
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["--addr", "127.0.0.1:0"])
            .args(mode.server_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Server("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = match lines.next() {
            Some(line) => line?,
            None => {
                let status = child.wait()?;
                return Err(Error::Server(format!("exited before listening ({status})")));
            }
        };
        let server = Self {
            addr: listening_addr(&first)
                .ok_or_else(|| Error::Server(format!("unexpected first line {first:?}")))?,
            child,
        };
        // Keeps the pipe drained so the server never blocks on a full one.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // This process's own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in `listening on http://ADDR (...)`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("listening on http://")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Starts the server in `mode`, warms it up, then measures it.
fn measure(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    mode: Mode,
    args: Args,
) -> Result<Sample, Error> {
    let server = Server::start(binary, mode, None)?;
    runtime.block_on(load(server.addr, args.connections, args.warmup))?;
    let sample = runtime.block_on(load(server.addr, args.connections, args.duration))?;
    drop(server);
    Ok(sample)
}

/// Whether `wrk` runs here.
fn wrk_installed() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Starts the server in `mode`, warms it up with the in-process client, then measures it
/// with `wrk` running `script` (the histogram printer).
fn measure_with_wrk(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    mode: Mode,
    args: Args,
    script: &Path,
) -> Result<Round, Error> {
    let server = Server::start(binary, mode, args.pin)?;
    let wrk_cpu = args.pin.map(|pin| pin.wrk_cpu);
    // `wrk` runs whole seconds: the in-process client warms up for shorter.
    runtime.block_on(load(server.addr, args.connections, args.warmup))?;
    let output = wrk(
        server.addr,
        args.connections,
        args.threads,
        args.duration,
        wrk_cpu,
        script,
    )?;
    drop(server);
    parse_wrk(&output)
}

/// One `wrk` run with `script`; its standard output.
fn wrk(
    addr: SocketAddr,
    connections: u32,
    threads: usize,
    duration: Duration,
    cpu: Option<usize>,
    script: &Path,
) -> Result<String, Error> {
    // wrk wants at least as many connections as threads.
    let threads = threads.clamp(1, usize::try_from(connections).unwrap_or(usize::MAX).max(1));
    let mut command = match cpu {
        Some(cpu) => Pin::command(cpu, "wrk"),
        None => Command::new("wrk"),
    };
    command
        .arg(format!("--threads={threads}"))
        .arg(format!("--connections={connections}"))
        .arg(format!("--duration={}s", duration.as_secs().max(1)))
        .args(["--header", "x-api-key: load"])
        .arg("--script")
        .arg(script);
    let output = command
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(Error::Wrk(format!(
            "{} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The round in the report of `wrk` with the histogram script.
fn parse_wrk(output: &str) -> Result<Round, Error> {
    let missing = |what: &str| Error::Wrk(format!("no {what} in its report:\n{output}"));
    let mut total = None;
    let mut seconds = None;
    let mut histogram = Histogram::default();
    let mut in_histogram = false;
    let mut refused = 0;
    let mut other = 0;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["histogram-begin"] => in_histogram = true,
            ["histogram-end"] => in_histogram = false,
            [micros, count] if in_histogram => {
                if let (Ok(micros), Ok(count)) = (micros.parse(), count.parse()) {
                    histogram.record(micros, count);
                }
            }
            [count, "requests", "in", time, ..] => {
                total = count.parse::<u64>().ok();
                seconds = duration_ms(time.trim_end_matches(',')).map(|ms| ms / 1e3);
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => refused = count.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                other = rest
                    .iter()
                    .filter_map(|word| word.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    let total = total.ok_or_else(|| missing("request count"))?;
    if histogram.buckets.is_empty() {
        return Err(missing("latency histogram"));
    }
    Ok(Round {
        requests: total.saturating_sub(refused),
        seconds: seconds.ok_or_else(|| missing("duration"))?,
        histogram,
        refused,
        other,
    })
}

/// `wrk`'s durations (`512.00us`, `1.20ms`, `8.00s`, `1.50m`) in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3_600e3,
        _ => return None,
    };
    Some(number * scale)
}

/// Keeps `connections` keep-alive connections busy for `duration`.
async fn load(addr: SocketAddr, connections: u32, duration: Duration) -> Result<Sample, Error> {
    let start = Instant::now();
    let deadline = start + duration;
    let host = Arc::new(
        HeaderValue::from_str(&addr.to_string()).map_err(|e| Error::Server(e.to_string()))?,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let host = Arc::clone(&host);
        tasks.spawn(async move { connection(addr, i, &host, deadline).await });
    }
    let mut total = Sample::default();
    while let Some(joined) = tasks.join_next().await {
        let sample = joined.map_err(|e| Error::Server(format!("a load task failed: {e}")))?;
        total.merge(sample);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// One connection, one request after the other until `deadline`. A connection that fails
/// is counted and opened again.
async fn connection(addr: SocketAddr, index: u32, host: &HeaderValue, deadline: Instant) -> Sample {
    let key =
        HeaderValue::from_str(&format!("load-{index}")).unwrap_or(HeaderValue::from_static("load"));
    let mut sample = Sample::default();
    'connect: while Instant::now() < deadline {
        let Ok(stream) = TcpStream::connect(addr).await else {
            sample.errors += 1;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            sample.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < deadline {
            if sender.ready().await.is_err() {
                sample.errors += 1;
                continue 'connect;
            }
            let request = Request::get("/")
                .header(http::header::HOST, host.clone())
                .header("x-api-key", key.clone())
                .body(Empty::<Bytes>::new());
            let Ok(request) = request else {
                sample.errors += 1;
                return sample;
            };
            let sent = Instant::now();
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(_) => {
                    sample.errors += 1;
                    continue 'connect;
                }
            };
            let status = response.status();
            if response.into_body().collect().await.is_err() {
                sample.errors += 1;
                continue 'connect;
            }
            let took = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
            match status.as_u16() {
                200..=299 => sample.latencies.push(took),
                429 => sample.refused_429 += 1,
                503 => sample.refused_503 += 1,
                _ => sample.other_status += 1,
            }
        }
    }
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratios(values: &[f64]) -> Ratios {
        let mut per_pair = values.to_vec();
        per_pair.sort_unstable_by(f64::total_cmp);
        Ratios {
            per_pair,
            pooled: f64::NAN,
        }
    }

    #[test]
    fn interval_of_eight_pairs_is_second_smallest_to_second_largest() {
        let r = ratios(&[1.0, 0.5, 1.5, 0.9, 1.1, 0.8, 1.3, 0.7]);
        let (low, high, coverage) = r.interval();
        assert_eq!((low, high), (0.7, 1.3));
        // 1 - 2 * (1 + 8) / 256
        assert!((coverage - 0.929_687_5).abs() < 1e-12);
        assert!((r.median() - 0.95).abs() < 1e-12);
    }

    #[test]
    fn interval_of_too_few_pairs_is_their_range() {
        let (low, high, coverage) = ratios(&[1.2, 0.9, 1.0]).interval();
        assert_eq!((low, high), (0.9, 1.2));
        assert!((coverage - 0.75).abs() < 1e-12);
    }

    #[test]
    fn verdict_needs_the_whole_interval_on_one_side() {
        let below = ratios(&[1.0, 1.05, 1.1, 1.0, 1.02, 1.08, 0.98, 1.15]);
        assert_eq!(below.verdict(TARGET_P99, false), "met");
        let across = ratios(&[1.0, 1.05, 1.3, 1.0, 1.25, 1.08, 0.98, 1.4]);
        assert_eq!(across.verdict(TARGET_P99, false), "undecided");
        let above = ratios(&[1.3, 1.25, 1.5, 1.22, 1.6, 1.4, 1.0, 1.9]);
        assert_eq!(above.verdict(TARGET_P99, false), "missed");
        assert_eq!(above.verdict(TARGET_THROUGHPUT, true), "met");
    }

    #[test]
    fn percentile_is_the_smallest_bucket_reaching_the_rank() {
        let mut histogram = Histogram::default();
        histogram.record(100, 98);
        histogram.record(2_000, 1);
        histogram.record(9_000, 1);
        assert_eq!(histogram.percentile_ms(50.0), 0.1);
        assert_eq!(histogram.percentile_ms(99.0), 2.0);
        assert_eq!(histogram.percentile_ms(100.0), 9.0);
        assert!(Histogram::default().percentile_ms(99.0).is_nan());
    }

    #[test]
    fn wrk_report_with_histogram_parses() {
        let report = "Running 2s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  \
                      54686 requests in 2.04s, 7.14MB read\n  Non-2xx or 3xx responses: 6\n\
                      Requests/sec:  26824.07\nhistogram-begin\n15 1\n484 60\n16147 39\n\
                      histogram-end\n";
        let round = parse_wrk(report).expect("a full report");
        assert_eq!(round.requests, 54_680);
        assert_eq!(round.refused, 6);
        assert!((round.seconds - 2.04).abs() < 1e-9);
        assert_eq!(round.histogram.percentile_ms(50.0), 0.484);
        assert_eq!(round.histogram.percentile_ms(99.0), 16.147);
        assert!(parse_wrk("54686 requests in 2.04s, 7.14MB read\n").is_err());
    }
}
