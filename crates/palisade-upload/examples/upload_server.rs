//! A tus 1.0 upload server: `TusServer` over a `FileStore`, mounted in axum.
//!
//! ```sh
//! cargo run -p palisade-upload --example upload_server -- [--dir DIR] [--addr ADDR] [--expire-after SECS] [--cleanup-every SECS]
//! ```
//!
//! It serves the tus endpoint at `http://ADDR/files` (`ADDR` defaults to `127.0.0.1:1080`),
//! keeping uploads in `DIR` (default: a temporary directory, removed on exit). Unfinished
//! uploads expire `--expire-after` seconds after their last write (default 3600) and a
//! clean-up pass removes them every `--cleanup-every` seconds (default 60). Upload with the
//! `upload` example, or any tus client:
//!
//! ```sh
//! cargo run -p palisade-upload --example upload -- some-file.bin
//! ```
//!
//! Ctrl-C (or SIGTERM) stops it gracefully. Expected output of a run with
//! `--expire-after 3 --cleanup-every 2`: one upload that completed, one that a client
//! abandoned (Ctrl-C) and the clean-up removed:
//!
//! ```text
//! tus server on http://127.0.0.1:1080/files
//!   store:   /tmp/.tmpAbC123/uploads (temporary)
//!   expiry:  unfinished uploads expire 3 s after their last write; clean-up every 2 s
//! created   f9286ec21c5800829558f580609d5966 (50331648 bytes)
//! completed f9286ec21c5800829558f580609d5966: 50331648 bytes, sha256 bf8ebcdfc3dab02c54faf25b664c4923114a04eca22baa54fb0b3ddbc8a66485, filename "palisade-upload-demo.bin"
//!           at /tmp/.tmpAbC123/uploads/f9286ec21c5800829558f580609d5966.bin
//! created   0ceccff772432fdf267af464ef900ca6 (50331648 bytes)
//! expired   0ceccff772432fdf267af464ef900ca6 (removed by the clean-up)
//! ^Cshutting down
//! ```
//!
//! A chunk refused with a status (checksum mismatch 460, body too slow 408, offset
//! conflict 409, ...) prints a `rejected` line. A chunk whose client disconnects mid-body
//! prints nothing: the connection's end cancels the request, and the partial bytes, never
//! committed, are cut off before the next chunk.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use palisade_core::event::listener_fn;
use palisade_upload::server::{Completed, ServerConfig, TusServer, UploadEvent};
use palisade_upload::store::FileStore;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str =
    "usage: upload_server [--dir DIR] [--addr ADDR] [--expire-after SECS] [--cleanup-every SECS]";

/// The command line.
#[derive(Debug)]
struct Args {
    dir: Option<PathBuf>,
    addr: SocketAddr,
    expire_after: Duration,
    cleanup_every: Duration,
}

impl Args {
    fn parse() -> Result<Self, BoxError> {
        let mut args = Self {
            dir: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 1080)),
            expire_after: Duration::from_secs(3600),
            cleanup_every: Duration::from_secs(60),
        };
        let mut argv = std::env::args().skip(1);
        while let Some(flag) = argv.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = argv
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            match flag.as_str() {
                "--dir" => args.dir = Some(PathBuf::from(value)),
                "--addr" => args.addr = value.parse()?,
                "--expire-after" => args.expire_after = Duration::from_secs(value.parse()?),
                "--cleanup-every" => args.cleanup_every = Duration::from_secs(value.parse()?),
                _ => return Err(format!("unknown argument {flag:?}\n{USAGE}").into()),
            }
        }
        if args.cleanup_every.is_zero() {
            return Err("--cleanup-every must be at least 1 second".into());
        }
        Ok(args)
    }
}

/// The completion hook: the upload's id, size, SHA-256 (computed by the server while the
/// chunks arrived) and where its bytes are.
async fn on_complete(done: Completed) {
    let filename = done
        .metadata
        .get_str("filename")
        .map_or_else(String::new, |name| format!(", filename {name:?}"));
    println!(
        "completed {}: {} bytes, sha256 {}{filename}",
        done.id,
        done.size,
        hex::encode(done.sha256)
    );
    if let Some(path) = done.path {
        println!("          at {}", path.display());
    }
}

/// Prints the events worth a line (chunks that committed are not: one per chunk).
fn on_event(event: &UploadEvent) {
    match event {
        UploadEvent::Created { id, length } => match length {
            Some(length) => println!("created   {id} ({length} bytes)"),
            None => println!("created   {id} (length deferred)"),
        },
        UploadEvent::ChunkRejected { id, status } => {
            println!("rejected  a chunk of {id}: answered {status}");
        }
        UploadEvent::Terminated { id } => println!("terminated {id}"),
        UploadEvent::Expired { id } => println!("expired   {id} (removed by the clean-up)"),
        _ => {}
    }
}

/// Resolves on Ctrl-C, or on SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                eprintln!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let args = Args::parse()?;

    // A temporary directory lives (and is removed) with `_temp`.
    let (dir, _temp) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::tempdir()?;
            (temp.path().join("uploads"), Some(temp))
        }
    };
    let store = FileStore::new(&dir)?;

    let config = ServerConfig::new()
        .base_path("/files")
        .expires_after(Some(args.expire_after))
        .on_complete(on_complete)
        .listener(listener_fn(on_event));
    let server = TusServer::new(store, config);

    // The periodic clean-up of expired, unfinished uploads; each removal prints an
    // `expired` line through the listener.
    let cleanup = server.spawn_cleanup(args.cleanup_every);

    let app = axum::Router::new().nest_service("/files", server);
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let addr = listener.local_addr()?;
    println!("tus server on http://{addr}/files");
    println!(
        "  store:   {}{}",
        dir.display(),
        if args.dir.is_none() {
            " (temporary)"
        } else {
            ""
        }
    );
    println!(
        "  expiry:  unfinished uploads expire {} s after their last write; clean-up every {} s",
        args.expire_after.as_secs(),
        args.cleanup_every.as_secs()
    );

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            shutdown_signal().await;
            println!("shutting down");
        })
        .await?;
    cleanup.abort();
    Ok(())
}
