//! Server memory does not grow with the chunk: a 64 MiB `PATCH` streams through in
//! frames, and the peak of live heap bytes stays far below the chunk's size.
//!
//! This binary counts live heap bytes with `palisade-testkit`'s allocator.

use bytes::Bytes;
use http::{Request, StatusCode};
use palisade_testkit::alloc::{CountingAllocator, peak_bytes, reset_peak};
use palisade_upload::server::{ServerConfig, TusServer};
use palisade_upload::store::FileStore;
use tower::ServiceExt as _;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

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
    let baseline = reset_peak();
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
    let grown = peak_bytes() - baseline;
    assert!(
        grown < 8 * 1024 * 1024,
        "a 64 MiB chunk raised the heap peak by {grown} bytes"
    );
}
