//! A resumable upload (tus 1.0): the client's first run is cut after a few chunks through
//! its cancel handle; the second run asks the server what it holds and sends only the rest.
//! The server (in-process, on loopback, files in a temporary directory) counts the bytes it
//! committed, and its completion hook reports the SHA-256 of what it stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt as _;
use palisade::core::event::listener_fn;
use palisade::upload::client::{CancelHandle, ClientError, Uploader};
use palisade::upload::server::{ServerConfig, TusServer, UploadEvent};
use palisade::upload::store::FileStore;
use palisade_examples::SplitMix64;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::error::{Context, TourError};

/// The file's size: 2 MiB.
const FILE_SIZE: usize = 2 * 1024 * 1024;
/// The client's chunk size: 256 KiB, so the file takes 8 chunks.
const CHUNK: usize = 256 * 1024;
/// The first run is cancelled once this many chunks are on the server.
const CUT_AFTER: u64 = 3;

/// Runs the section; returns its summary line.
pub(crate) async fn run() -> Result<String, TourError> {
    let dir = tempfile::tempdir().context("creating a directory for the upload")?;

    // The server: counts committed bytes, reports each completed upload's SHA-256.
    let committed = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&committed);
    let (completed_tx, mut completed_rx) = mpsc::unbounded_channel();
    let config = ServerConfig::new()
        .listener(listener_fn(move |event: &UploadEvent| {
            if let UploadEvent::ChunkCommitted { bytes, .. } = event {
                counter.fetch_add(*bytes, Ordering::Relaxed);
            }
        }))
        .on_complete(move |done| {
            // The receiver lives until the end of the section.
            let _ = completed_tx.send(done);
            async {}
        });
    let store = FileStore::new(dir.path().join("uploads")).context("opening the upload store")?;
    let app = Router::new().nest_service("/files", TusServer::new(store, config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the upload server's port")?;
    let addr = listener
        .local_addr()
        .context("reading the upload server's address")?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // The file: 2 MiB of seeded random bytes.
    let mut data = vec![0_u8; FILE_SIZE];
    SplitMix64::new(0xF11E).fill(&mut data);
    let file = dir.path().join("quarterly-report.bin");
    tokio::fs::write(&file, &data)
        .await
        .context("writing the file to upload")?;
    let endpoint = format!("http://{addr}/files");
    let state = dir.path().join("resume-state");

    // First run: cancelled from the progress callback once CUT_AFTER chunks are committed.
    let cancel = CancelHandle::new();
    let cutter = cancel.clone();
    let first = Uploader::new(&endpoint)
        .context("creating the uploader")?
        .chunk_size(CHUNK)
        .state_dir(&state)
        .cancel_handle(&cancel)
        .on_progress(move |progress| {
            if progress.chunk >= CUT_AFTER {
                cutter.cancel();
            }
        })
        .upload_file(&file)
        .await;
    match first {
        Err(ClientError::Cancelled) => {}
        Err(error) => return Err(TourError::check("upload, first run", error.to_string())),
        Ok(_) => {
            return Err(TourError::check(
                "upload, first run",
                "finished although it was cancelled",
            ));
        }
    }
    let after_cut = committed.load(Ordering::Relaxed);
    println!(
        "  run 1: cancelled after {} KiB of {} KiB were committed on the server",
        after_cut / 1024,
        FILE_SIZE / 1024
    );

    // Second run: same file, same state directory: it resumes.
    let uploaded = Uploader::new(&endpoint)
        .context("creating the uploader")?
        .chunk_size(CHUNK)
        .state_dir(&state)
        .upload_file(&file)
        .await
        .context("resuming the upload")?;
    let second_run = committed.load(Ordering::Relaxed) - after_cut;
    println!(
        "  run 2: resumed at {} KiB, sent {} KiB (the server committed {} KiB more)",
        uploaded.resumed_from / 1024,
        uploaded.sent / 1024,
        second_run / 1024
    );

    let done = tokio::time::timeout(Duration::from_secs(5), completed_rx.recv())
        .await
        .context("waiting for the server's completion hook")?
        .context("the server's completion report")?;
    let stored = match &done.path {
        Some(path) => tokio::fs::read(path)
            .await
            .context("reading the stored upload")?,
        None => return Err(TourError::check("upload", "the file store kept no path")),
    };
    server.abort();

    if uploaded.resumed_from != after_cut || uploaded.sent != FILE_SIZE as u64 - after_cut {
        return Err(TourError::check(
            "upload",
            format!(
                "resumed at {} and sent {} bytes, expected {after_cut} and {}",
                uploaded.resumed_from,
                uploaded.sent,
                FILE_SIZE as u64 - after_cut
            ),
        ));
    }
    if done.sha256 != uploaded.sha256 || stored != data {
        return Err(TourError::check(
            "upload",
            "the stored file differs from the local one",
        ));
    }
    println!(
        "  sha256 {} on both sides; stored file identical ({} bytes)",
        hex(&done.sha256),
        done.size
    );
    Ok(format!(
        "{} KiB file cut at {} KiB, resumed: run 2 sent {} KiB (only the missing bytes); SHA-256 verified",
        FILE_SIZE / 1024,
        after_cut / 1024,
        uploaded.sent / 1024
    ))
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
