//! A resumable tus upload with progress, checksums and clean Ctrl-C cancellation.
//!
//! ```sh
//! # in one terminal: a tus server (the `upload_server` example)
//! cargo run -p palisade-upload --example upload_server
//! # in another:
//! cargo run -p palisade-upload --example upload -- [FILE] [URL] [--chunk-size BYTES] [--state-dir DIR] [--throttle-ms MS]
//! ```
//!
//! It uploads `FILE` to the tus endpoint `URL` (default `http://127.0.0.1:1080/files`) with
//! [`Uploader`]: chunks (default 5 MiB) each carrying `Upload-Checksum: sha256`, retried
//! with backoff on failure. Without `FILE` it uploads a 48 MiB demo file, created once (same
//! bytes every time) in the system temp directory.
//!
//! Progress lines show percent, bytes, speed, ETA and the chunk number (at most about four
//! lines a second). The resume state lives in `--state-dir` (default
//! `<temp dir>/palisade-upload-state`), one file per upload named after the file's SHA-256.
//! Press Ctrl-C mid-upload: the `CancelHandle` stops it, the upload stays on the server, and
//! running the same command again resumes where the server left off (the output says
//! `resumed from`). SHA-256 dominates the time of a debug build (a few MiB/s); with
//! `--release` an upload on loopback takes well under a second, and `--throttle-ms 300`
//! pauses after each chunk so there is time to press Ctrl-C.
//!
//! Expected output of a debug build (an interrupted run, then the resumed one):
//!
//! ```text
//! uploading palisade-upload-demo.bin (48.0 MiB) to http://127.0.0.1:1080/files in 5.0 MiB chunks
//!   state dir /tmp/palisade-upload-state
//!     10.4%  chunk  1/10     5.0 of 48.0 MiB       2.2 MiB/s  eta 19.4s
//!     20.8%  chunk  2/10    10.0 of 48.0 MiB       2.1 MiB/s  eta 18.1s
//!     31.2%  chunk  3/10    15.0 of 48.0 MiB       2.0 MiB/s  eta 16.4s
//! ^C cancelling...
//! cancelled with 15.0 of 48.0 MiB on the server; run the same command again to resume
//!
//! uploading palisade-upload-demo.bin (48.0 MiB) to http://127.0.0.1:1080/files in 5.0 MiB chunks
//!   state dir /tmp/palisade-upload-state
//!   resuming: the server already holds 15.0 MiB
//!     41.7%  chunk  4/10    20.0 of 48.0 MiB       3.5 MiB/s  eta 8.1s
//!   ...
//!    100.0%  chunk 10/10    48.0 of 48.0 MiB       2.0 MiB/s  eta 0.0s
//! done: http://127.0.0.1:1080/files/f9286ec21c5800829558f580609d5966
//!   size 50331648 bytes, resumed from 15728640, sent 34603008 bytes this run
//!   sha256 bf8ebcdfc3dab02c54faf25b664c4923114a04eca22baa54fb0b3ddbc8a66485
//! ```
//!
//! The interrupted run exits with status 130.
//! The server prints the same SHA-256 in its `completed` line: it hashed what it stored.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use palisade_upload::client::{CancelHandle, ClientError, DEFAULT_CHUNK_SIZE, Progress, Uploader};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str =
    "usage: upload [FILE] [URL] [--chunk-size BYTES] [--state-dir DIR] [--throttle-ms MS]";
const DEFAULT_URL: &str = "http://127.0.0.1:1080/files";
const DEMO_SIZE: u64 = 48 << 20;

/// The command line.
#[derive(Debug)]
struct Args {
    file: Option<PathBuf>,
    url: String,
    chunk_size: usize,
    state_dir: PathBuf,
    throttle: Duration,
}

impl Args {
    fn parse() -> Result<Self, BoxError> {
        let mut args = Self {
            file: None,
            url: DEFAULT_URL.to_owned(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            state_dir: std::env::temp_dir().join("palisade-upload-state"),
            throttle: Duration::ZERO,
        };
        let mut positional = Vec::new();
        let mut argv = std::env::args().skip(1);
        while let Some(arg) = argv.next() {
            if arg == "-h" || arg == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            if !arg.starts_with("--") {
                positional.push(arg);
                continue;
            }
            let value = argv
                .next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
            match arg.as_str() {
                "--chunk-size" => args.chunk_size = value.parse()?,
                "--state-dir" => args.state_dir = PathBuf::from(value),
                "--throttle-ms" => args.throttle = Duration::from_millis(value.parse()?),
                _ => return Err(format!("unknown argument {arg:?}\n{USAGE}").into()),
            }
        }
        let mut positional = positional.into_iter();
        args.file = positional.next().map(PathBuf::from);
        if let Some(url) = positional.next() {
            args.url = url;
        }
        if let Some(extra) = positional.next() {
            return Err(format!("unexpected argument {extra:?}\n{USAGE}").into());
        }
        if args.chunk_size == 0 {
            return Err("--chunk-size must be at least 1".into());
        }
        Ok(args)
    }
}

/// The demo file: `DEMO_SIZE` pseudo-random bytes from a fixed seed, so that every run
/// uploads the same content (and an interrupted upload resumes). Made once.
fn demo_file() -> std::io::Result<PathBuf> {
    use std::io::Write as _;

    let path = std::env::temp_dir().join("palisade-upload-demo.bin");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == DEMO_SIZE) {
        return Ok(path);
    }
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    // xorshift64*: incompressible enough, and the same bytes on every machine.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..DEMO_SIZE / 8 {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.write_all(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes())?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// One progress line.
fn progress_line(p: &Progress) -> String {
    let eta = p.eta().map_or_else(
        || "?".to_owned(),
        |eta| format!("{:.1}s", eta.as_secs_f64()),
    );
    let width = p.chunks.to_string().len();
    format!(
        "  {:>6.1}%  chunk {:>width$}/{}  {:>6.1} of {:.1} MiB  {:>8.1} MiB/s  eta {eta}",
        p.percent(),
        p.chunk,
        p.chunks,
        mib(p.bytes),
        mib(p.total),
        p.speed() / f64::from(1 << 20),
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, BoxError> {
    let args = Args::parse()?;
    let file = match &args.file {
        Some(file) => file.clone(),
        None => demo_file()?,
    };
    let size = std::fs::metadata(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .len();
    println!(
        "uploading {} ({:.1} MiB) to {} in {:.1} MiB chunks",
        file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        ),
        mib(size),
        args.url,
        mib(args.chunk_size as u64),
    );
    println!("  state dir {}", args.state_dir.display());

    // Ctrl-C cancels through the handle; the upload stays on the server, resumable.
    let cancel = CancelHandle::new();
    let on_ctrl_c = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                println!(" cancelling...");
                cancel.cancel();
            }
        })
    };

    let uploaded = Arc::new(AtomicU64::new(0));
    let reporter = Reporter {
        throttle: args.throttle,
        uploaded: Arc::clone(&uploaded),
        state: Mutex::new(ReporterState::default()),
    };
    let uploader = Uploader::new(&args.url)?
        .chunk_size(args.chunk_size)
        .state_dir(&args.state_dir)
        .cancel_handle(&cancel)
        .on_progress(move |p| reporter.report(p));

    let result = uploader.upload_file(&file).await;
    on_ctrl_c.abort();
    match result {
        Ok(done) => {
            println!("done: {}", done.url);
            println!(
                "  size {} bytes, resumed from {}, sent {} bytes this run",
                done.size, done.resumed_from, done.sent
            );
            println!("  sha256 {}", hex::encode(done.sha256));
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Cancelled) => {
            println!(
                "cancelled with {:.1} of {:.1} MiB on the server; run the same command again to resume",
                mib(uploaded.load(Ordering::Relaxed)),
                mib(size),
            );
            Ok(ExitCode::from(130))
        }
        Err(error) => {
            let held = uploaded.load(Ordering::Relaxed);
            let hint = if held > 0 {
                format!(
                    "; the server holds {:.1} MiB, run the same command again to resume",
                    mib(held)
                )
            } else {
                String::new()
            };
            Err(format!("upload failed: {error}{hint}").into())
        }
    }
}

#[derive(Debug, Default)]
struct ReporterState {
    first: bool,
    last_line: Option<Instant>,
}

/// Prints progress: a `resuming` line on the first report of a resumed upload, then at most
/// about four lines a second, and always the last chunk.
struct Reporter {
    throttle: Duration,
    uploaded: Arc<AtomicU64>,
    state: Mutex<ReporterState>,
}

impl Reporter {
    fn report(&self, p: &Progress) {
        self.uploaded.store(p.bytes, Ordering::Relaxed);
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if !state.first {
                state.first = true;
                if p.resumed_from > 0 {
                    println!(
                        "  resuming at {:.1}%: the server already holds {:.1} MiB",
                        p.resumed_from as f64 * 100.0 / p.total as f64,
                        mib(p.resumed_from)
                    );
                }
            }
            let due = state
                .last_line
                .is_none_or(|at| at.elapsed() >= Duration::from_millis(250));
            if due || p.chunk == p.chunks || !self.throttle.is_zero() {
                state.last_line = Some(Instant::now());
                println!("{}", progress_line(p));
            }
        }
        if !self.throttle.is_zero() && p.bytes < p.total {
            // Slows the demo down: the upload waits here, between two chunks. The runtime
            // is multi-threaded, so the Ctrl-C task keeps running meanwhile.
            tokio::task::block_in_place(|| std::thread::sleep(self.throttle));
        }
    }
}
