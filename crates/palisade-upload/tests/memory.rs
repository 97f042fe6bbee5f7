//! Server memory does not grow with the chunk: a 64 MiB `PATCH` streams through in
//! frames, and the peak of live heap bytes stays far below the chunk's size.
//!
//! This binary tracks live heap bytes with its own allocator (hence the `unsafe`).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, StatusCode};
use palisade_upload::server::{ServerConfig, TusServer};
use palisade_upload::store::FileStore;
use tower::ServiceExt as _;

struct PeakAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for PeakAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: PeakAllocator = PeakAllocator;

const FRAME: usize = 64 * 1024;
static DATA: [u8; FRAME] = [7; FRAME];

#[tokio::test]
async fn a_64_mib_chunk_streams_without_buffering() {
    const CHUNK: u64 = 64 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = TusServer::new(FileStore::new(dir.path()).unwrap(), ServerConfig::new());
    let created = server
        .clone()
        .oneshot(
            Request::post("/files")
                .header("tus-resumable", "1.0.0")
                .header("upload-length", CHUNK)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let url = created.headers()["location"].to_str().unwrap().to_owned();

    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(2);
    let feeder = tokio::spawn(async move {
        for _ in 0..CHUNK / FRAME as u64 {
            // Static data: the frames themselves allocate nothing.
            tx.send_data(Bytes::from_static(&DATA)).await.unwrap();
        }
    });
    let baseline = LIVE.load(Ordering::SeqCst);
    PEAK.store(baseline, Ordering::SeqCst);
    let resp = server
        .clone()
        .oneshot(
            Request::patch(url.as_str())
                .header("tus-resumable", "1.0.0")
                .header("content-type", "application/offset+octet-stream")
                .header("upload-offset", 0)
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    feeder.await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["upload-offset"], CHUNK.to_string().as_str());
    let grown = PEAK.load(Ordering::SeqCst) - baseline;
    assert!(
        grown < 8 * 1024 * 1024,
        "a 64 MiB chunk raised the heap peak by {grown} bytes"
    );
}
