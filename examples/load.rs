//! What Palisade's server stack costs under load: the `axum_server` example, bare and behind
//! its full stack, each in a process of its own, loaded over keep-alive HTTP/1 on loopback.
//!
//! ```sh
//! cargo build --release -p palisade-examples --examples
//! cargo run --release -p palisade-examples --example load
//! cargo run --release -p palisade-examples --example load -- --duration 10 --connections 64 --rounds 3
//! ```
//!
//! Each round starts the server once with `--bare` and once with the full stack, warms it
//! up, then keeps `--connections` connections busy for `--duration` seconds, one request
//! after the other on each, and records every latency. The full stack runs with limits no
//! request reaches (a rate of 1,000,000 per second per key, a pool of 4,096): nothing is
//! refused, so the comparison is the cost of the layers themselves (every request still goes
//! through the shutdown tracking, a keyed GCRA check, a pool permit and the breaker's
//! window). Refusals, if any, are counted and shown apart.
//!
//! The load comes from [`wrk`](https://github.com/wg/wrk) when it is on `PATH` (one request
//! after the other on each connection, latencies from its `--latency` distribution), else
//! from a small hyper client in this process (`--generator rust` forces it). Either way the
//! generator shares the machine with the server: on a small machine give it few threads
//! (`--threads`, default 1) and run it when nothing else is busy; it prints the load average
//! before it starts.
//!
//! With `--pin` (and `wrk` on a machine of two or more CPUs with `taskset` on `PATH`), the
//! two sides are pinned apart: the server runs on the last CPU with one runtime worker
//! (`TOKIO_WORKER_THREADS=1`) and `wrk` on the first, so neither steals the other's core and
//! the throughput ratio is the server's cost per request on one core. Its p99 then mostly
//! shows one thread taking turns among the connections, so it is not the default.
//!
//! The summary adds up requests and seconds over the rounds for throughput, and takes the
//! median of the rounds' p50 and p99 (`wrk` reports percentiles, not samples).
//!
//! Options: `--duration S` (default 5), `--warmup S` (default 1), `--connections N`
//! (default 32), `--rounds N` (default 2, alternating bare and full), `--threads N`
//! (default 1), `--generator wrk|rust` (default `wrk` when installed), `--pin`.

use std::io::{BufRead, BufReader};
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
                     [--threads N] [--generator wrk|rust] [--pin]";

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
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            connections: 32,
            rounds: 2,
            threads: 1,
            generator: if wrk_installed() {
                Generator::Wrk
            } else {
                Generator::Rust
            },
            pin: None,
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
            match arg.as_str() {
                "--duration" => args.duration = Duration::from_secs(value("--duration")?),
                "--warmup" => args.warmup = Duration::from_secs(value("--warmup")?),
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
}

impl Sample {
    /// The round this sample makes.
    fn round(mut self) -> Round {
        self.latencies.sort_unstable();
        Round {
            requests: self.latencies.len() as u64,
            seconds: self.elapsed.as_secs_f64(),
            p50_ms: percentile_ms(&self.latencies, 50.0),
            p99_ms: percentile_ms(&self.latencies, 99.0),
            refused: self.refused_429 + self.refused_503,
            other: self.other_status + self.errors,
        }
    }
}

/// One measured run of one mode.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// `2xx` answers.
    requests: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// `429` and `503` answers (with `wrk`: every answer that is not `2xx` or `3xx`).
    refused: u64,
    /// Other statuses, connection and socket errors.
    other: u64,
}

/// Every round of one mode.
#[derive(Debug, Default)]
struct Totals {
    rounds: Vec<Round>,
}

impl Totals {
    fn throughput(&self) -> f64 {
        let requests: u64 = self.rounds.iter().map(|r| r.requests).sum();
        let seconds: f64 = self.rounds.iter().map(|r| r.seconds).sum();
        requests as f64 / seconds.max(f64::EPSILON)
    }

    fn median(&self, of: impl Fn(&Round) -> f64) -> f64 {
        let mut values: Vec<f64> = self.rounds.iter().map(of).collect();
        values.sort_unstable_by(f64::total_cmp);
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    fn refused(&self) -> u64 {
        self.rounds.iter().map(|r| r.refused).sum()
    }

    fn other(&self) -> u64 {
        self.rounds.iter().map(|r| r.other).sum()
    }
}

/// The `p`-th percentile (0 to 100) of sorted nanoseconds, in milliseconds: the smallest
/// value with at least `p` % of the values at or below it.
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
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

    println!(
        "load: {} connections, keep-alive HTTP/1 on loopback, {:?} per run after {:?} of warm-up, \
         {} round(s), {} generator thread(s) of {}",
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
    println!(
        "the full stack runs with limits no request reaches (1,000,000 req/s per key, a pool \
         of 4,096): this measures the cost of the layers, not their refusals"
    );
    if let Some(load) = load_average() {
        println!("load average before: {load}");
    }
    println!();
    println!(
        "{:<12} {:>6} {:>10} {:>11} {:>9} {:>9} {:>8} {:>7}",
        "mode", "round", "requests", "req/s", "p50 ms", "p99 ms", "refused", "other"
    );

    let mut bare = Totals::default();
    let mut full = Totals::default();
    for number in 1..=args.rounds {
        for mode in [Mode::Bare, Mode::Full] {
            let round = match args.generator {
                Generator::Wrk => measure_with_wrk(&server, mode, args)?,
                Generator::Rust => measure(&runtime, &server, mode, args)?.round(),
            };
            println!(
                "{:<12} {:>6} {:>10} {:>11.0} {:>9.3} {:>9.3} {:>8} {:>7}",
                mode.name(),
                number,
                round.requests,
                round.requests as f64 / round.seconds.max(f64::EPSILON),
                round.p50_ms,
                round.p99_ms,
                round.refused,
                round.other,
            );
            match mode {
                Mode::Bare => bare.rounds.push(round),
                Mode::Full => full.rounds.push(round),
            }
        }
    }

    println!();
    for (name, totals) in [("bare", &bare), ("full stack", &full)] {
        println!(
            "{name:<12} all rounds: {:>11.0} req/s, median p50 {:.3} ms, median p99 {:.3} ms, \
             {} refused, {} other",
            totals.throughput(),
            totals.median(|r| r.p50_ms),
            totals.median(|r| r.p99_ms),
            totals.refused(),
            totals.other()
        );
    }
    let throughput = full.throughput() / bare.throughput();
    let p99 = full.median(|r| r.p99_ms) / bare.median(|r| r.p99_ms);
    let p50 = full.median(|r| r.p50_ms) / bare.median(|r| r.p50_ms);
    println!(
        "full / bare: throughput {throughput:.3} (target >= {TARGET_THROUGHPUT:.2}: {}), \
         p99 {p99:.3} (target <= {TARGET_P99:.2}: {}), p50 {p50:.3}",
        verdict(throughput >= TARGET_THROUGHPUT),
        verdict(p99 <= TARGET_P99),
    );
    if let Some(load) = load_average() {
        println!("load average after: {load}");
    }
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
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

/// Starts the server in `mode`, warms it up with `wrk`, then measures it with `wrk`.
fn measure_with_wrk(binary: &Path, mode: Mode, args: Args) -> Result<Round, Error> {
    let server = Server::start(binary, mode, args.pin)?;
    let wrk_cpu = args.pin.map(|pin| pin.wrk_cpu);
    wrk(server.addr, args.connections, 1, args.warmup, wrk_cpu)?;
    let output = wrk(
        server.addr,
        args.connections,
        args.threads,
        args.duration,
        wrk_cpu,
    )?;
    drop(server);
    parse_wrk(&output)
}

/// One `wrk` run; its standard output.
fn wrk(
    addr: SocketAddr,
    connections: u32,
    threads: usize,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<String, Error> {
    // wrk wants at least as many connections as threads.
    let threads = threads.clamp(1, usize::try_from(connections).unwrap_or(usize::MAX).max(1));
    let mut command = match cpu {
        Some(cpu) => Pin::command(cpu, "wrk"),
        None => Command::new("wrk"),
    };
    let output = command
        .arg(format!("--threads={threads}"))
        .arg(format!("--connections={connections}"))
        .arg(format!("--duration={}s", duration.as_secs().max(1)))
        .args(["--latency", "--header", "x-api-key: load"])
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

/// The round in `wrk --latency`'s report.
fn parse_wrk(output: &str) -> Result<Round, Error> {
    let missing = |what: &str| Error::Wrk(format!("no {what} in its report:\n{output}"));
    let mut total = None;
    let mut seconds = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut refused = 0;
    let mut other = 0;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => p50 = duration_ms(value),
            ["99%", value] => p99 = duration_ms(value),
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
    Ok(Round {
        requests: total.saturating_sub(refused),
        seconds: seconds.ok_or_else(|| missing("duration"))?,
        p50_ms: p50.ok_or_else(|| missing("50th percentile"))?,
        p99_ms: p99.ok_or_else(|| missing("99th percentile"))?,
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
