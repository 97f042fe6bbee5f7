//! Our client against our server over real sockets, with a proxy that kills or corrupts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use palisade_core::Backoff;
use palisade_upload::client::{CancelHandle, ClientError, Progress, Uploader};
use palisade_upload::server::{Completed, ServerConfig, TusServer, UploadEvent};
use palisade_upload::store::FileStore;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

struct Harness {
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    done: Arc<Mutex<Vec<Completed>>>,
    store: PathBuf,
}

async fn serve() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let done: Arc<Mutex<Vec<Completed>>> = Arc::default();
    let config = ServerConfig::new().on_complete({
        let done = Arc::clone(&done);
        move |c| {
            done.lock().unwrap().push(c);
            async {}
        }
    });
    let server = TusServer::new(FileStore::new(&store).unwrap(), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(server.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Harness {
        dir,
        addr,
        done,
        store,
    }
}

/// A TCP proxy counting client-to-server bytes; it can cut every connection once
/// `kill_at` bytes went upstream (refusing later ones while `refuse_after_kill`), and flip
/// the byte at `corrupt_at` once.
#[derive(Clone)]
struct Proxy {
    addr: std::net::SocketAddr,
    upstream: Arc<AtomicU64>,
    healed: Arc<AtomicBool>,
}

impl Proxy {
    /// No more faults from now on.
    fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, Default)]
struct Faults {
    kill_at: Option<u64>,
    refuse_after_kill: bool,
    corrupt_at: Option<u64>,
}

async fn proxy(target: std::net::SocketAddr, faults: Faults) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let healed = Arc::new(AtomicBool::new(false));
    let counter = Arc::clone(&upstream);
    let healed2 = Arc::clone(&healed);
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let healthy = healed2.load(Ordering::SeqCst);
            if faults.refuse_after_kill && killed.load(Ordering::SeqCst) && !healthy {
                continue;
            }
            let faults = if healthy { Faults::default() } else { faults };
            let mut server = TcpStream::connect(target).await.unwrap();
            let counter = Arc::clone(&counter);
            let killed = Arc::clone(&killed);
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0_u8; 64 * 1024];
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        let at = counter.fetch_add(n as u64, Ordering::SeqCst);
                        let mut n = n;
                        if let Some(kill) = faults.kill_at
                            && !killed.load(Ordering::SeqCst)
                            && at + n as u64 >= kill
                        {
                            n = usize::try_from(kill.saturating_sub(at)).unwrap();
                            let _ = sw.write_all(&buf[..n]).await;
                            killed.store(true, Ordering::SeqCst);
                            return;
                        }
                        if let Some(c) = faults.corrupt_at
                            && (at..at + n as u64).contains(&c)
                        {
                            buf[usize::try_from(c - at).unwrap()] ^= 0xff;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! {
                    () = up => {}
                    _ = down => {}
                }
            });
        }
    });
    Proxy {
        addr,
        upstream,
        healed,
    }
}

fn write_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

fn url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}/files")
}

fn no_retries() -> Backoff {
    Backoff::constant(Duration::ZERO).with_max_attempts(std::num::NonZeroU32::MIN)
}

const CHUNK: usize = 256 * 1024;
const SIZE: usize = 4 * CHUNK + 12_345;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connection_resumes_with_only_the_missing_bytes() {
    let h = serve().await;
    let file = h.dir.path().join("data.bin");
    let data = write_file(&file, SIZE, 7);
    let state = h.dir.path().join("state");
    let cut = proxy(
        h.addr,
        Faults {
            kill_at: Some(2 * CHUNK as u64 + 100_000),
            refuse_after_kill: true,
            ..Faults::default()
        },
    )
    .await;
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let record = |seen: &Arc<Mutex<Vec<Progress>>>| {
        let seen = Arc::clone(seen);
        move |p: &Progress| seen.lock().unwrap().push(*p)
    };
    let first = Uploader::new(&url(cut.addr))
        .unwrap()
        .chunk_size(CHUNK)
        .backoff(no_retries())
        .request_timeout(Duration::from_secs(30))
        .state_dir(&state)
        .on_progress(record(&seen))
        .upload_file(&file)
        .await;
    assert!(first.is_err(), "the cut run fails: {first:?}");
    let fresh = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(fresh.len(), 2, "two chunks committed before the cut");
    assert!(
        fresh
            .iter()
            .all(|p| p.resumed_from == 0 && p.sent == p.bytes),
        "a fresh upload resumed from nothing: {fresh:?}"
    );
    assert!(h.done.lock().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        1,
        "state file kept"
    );

    cut.heal();
    let before = cut.upstream.load(Ordering::SeqCst);
    let second = Uploader::new(&url(cut.addr))
        .unwrap()
        .chunk_size(CHUNK)
        .state_dir(&state)
        .on_progress(record(&seen))
        .upload_file(&file)
        .await
        .unwrap();
    let resumed = seen.lock().unwrap();
    assert_eq!(resumed.len(), 3, "the three chunks left");
    for p in resumed.iter() {
        assert_eq!(
            p.resumed_from,
            2 * CHUNK as u64,
            "the server's offset: {p:?}"
        );
        assert_eq!(
            p.sent,
            p.bytes - p.resumed_from,
            "speed counts this run only"
        );
    }
    drop(resumed);
    assert_eq!(
        second.resumed_from,
        2 * CHUNK as u64,
        "the two whole chunks were kept"
    );
    let missing = SIZE as u64 - second.resumed_from;
    assert_eq!(second.sent, missing);
    let on_wire = cut.upstream.load(Ordering::SeqCst) - before;
    assert!(
        on_wire >= missing && on_wire < missing + 4096,
        "sent {on_wire} bytes for {missing} missing"
    );
    let expected: [u8; 32] = sha2::Sha256::digest(&data).into();
    assert_eq!(second.sha256, expected);
    let done = h.done.lock().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].sha256, expected);
    assert_eq!(std::fs::read(done[0].path.as_ref().unwrap()).unwrap(), data);
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        0,
        "state file removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_chunk_is_retried_within_the_same_run() {
    let h = serve().await;
    let file = h.dir.path().join("data.bin");
    let data = write_file(&file, SIZE, 9);
    let flaky = proxy(
        h.addr,
        Faults {
            kill_at: Some(CHUNK as u64 + 50_000),
            ..Faults::default()
        },
    )
    .await;
    let uploaded = Uploader::new(&url(flaky.addr))
        .unwrap()
        .chunk_size(CHUNK)
        .backoff(
            Backoff::constant(Duration::from_millis(1)).with_max_attempts(5.try_into().unwrap()),
        )
        .upload_file(&file)
        .await
        .unwrap();
    assert!(
        uploaded.sent <= (SIZE + CHUNK) as u64,
        "only the cut chunk was sent twice"
    );
    assert_eq!(
        uploaded.sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(&data))
    );
    assert_eq!(h.done.lock().unwrap()[0].sha256, uploaded.sha256);
}

/// The server commits the client's first chunk and, as if another writer had been there,
/// the two after it, then drops the connection without an answer: the client thinks the
/// chunk was cut, learns `3 * CHUNK` on `HEAD` (past the chunk it read ahead) and goes on
/// from there. Its whole-file SHA-256, computed along the upload, must still cover the bytes
/// it never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_file_hash_covers_bytes_the_server_committed_unseen() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    let data = Bytes::from(write_file(&file, SIZE, 29));
    let store = FileStore::new(dir.path().join("store")).unwrap();
    let server = TusServer::new(store, ServerConfig::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let leaped = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let leaped = Arc::clone(&leaped);
        let data = data.clone();
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (server, leaped, data) = (server.clone(), Arc::clone(&leaped), data.clone());
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let (server, leaped, data) =
                        (server.clone(), Arc::clone(&leaped), data.clone());
                    async move {
                        let first_patch = req.method() == http::Method::PATCH
                            && !leaped.swap(true, Ordering::SeqCst);
                        if !first_patch {
                            return Ok(server.oneshot(req).await.unwrap());
                        }
                        let path = req.uri().path().to_owned();
                        let answer = server.clone().oneshot(req).await.unwrap();
                        assert_eq!(answer.status(), http::StatusCode::NO_CONTENT);
                        for at in [CHUNK, 2 * CHUNK] {
                            let patch = http::Request::patch(path.as_str())
                                .header("tus-resumable", "1.0.0")
                                .header("content-type", "application/offset+octet-stream")
                                .header("upload-offset", at)
                                .body(Full::new(data.slice(at..at + CHUNK)))
                                .unwrap();
                            let answer = server.clone().oneshot(patch).await.unwrap();
                            assert_eq!(answer.status(), http::StatusCode::NO_CONTENT);
                        }
                        Err(std::io::Error::other("answer lost"))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    let uploaded = Uploader::new(&url(addr))
        .unwrap()
        .chunk_size(CHUNK)
        .backoff(
            Backoff::constant(Duration::from_millis(1)).with_max_attempts(3.try_into().unwrap()),
        )
        .upload_file(&file)
        .await
        .unwrap();
    assert!(leaped.load(Ordering::SeqCst));
    assert_eq!(
        uploaded.sent,
        (SIZE - 2 * CHUNK) as u64,
        "chunks 2 and 3 were never sent by the client"
    );
    assert_eq!(
        uploaded.sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(&data))
    );
}

/// A client that disconnects in the middle of a `PATCH` body, over a real socket: the server
/// reports the chunk rejected (nothing silently dropped) and counts none of it. (The dropped
/// future itself: `tests/server.rs`, `a_patch_whose_client_went_away_mid_body_...`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_cut_mid_body_is_reported_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (events, mut rejected) = tokio::sync::mpsc::unbounded_channel();
    let config =
        ServerConfig::new().listener(palisade_core::event::listener_fn(move |e: &UploadEvent| {
            if let UploadEvent::ChunkRejected { status, .. } = e {
                let _ = events.send(*status);
            }
        }));
    let server = TusServer::new(FileStore::new(dir.path().join("store")).unwrap(), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let server = server.clone();
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = TowerToHyperService::new(server.clone());
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        }
    });
    let created = server
        .clone()
        .oneshot(
            http::Request::post("/files")
                .header("tus-resumable", "1.0.0")
                .header("upload-length", 1000)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nhost: {addr}\r\ntus-resumable: 1.0.0\r\n\
         content-type: application/offset+octet-stream\r\nupload-offset: 0\r\n\
         content-length: 1000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[7; 400]).await.unwrap();
    drop(tcp);
    // Only against a hang: the event is awaited, not timed.
    let status = tokio::time::timeout(Duration::from_secs(60), rejected.recv())
        .await
        .expect("a rejection is reported")
        .unwrap();
    // Hyper hands the handler a body error here (400); when it drops the request's future
    // instead (the connection task ends first), the drop guard reports 499.
    assert!(matches!(status, 400 | 499), "{status}");
    let head = server
        .oneshot(
            http::Request::head(location.as_str())
                .header("tus-resumable", "1.0.0")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(head.headers()["upload-offset"], "0", "nothing of it counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_is_refused_and_sent_again() {
    let h = serve().await;
    let file = h.dir.path().join("data.bin");
    let data = write_file(&file, SIZE, 11);
    let corrupting = proxy(
        h.addr,
        Faults {
            corrupt_at: Some(CHUNK as u64 + 10_000),
            ..Faults::default()
        },
    )
    .await;
    let uploaded = Uploader::new(&url(corrupting.addr))
        .unwrap()
        .chunk_size(CHUNK)
        .backoff(
            Backoff::constant(Duration::from_millis(1)).with_max_attempts(3.try_into().unwrap()),
        )
        .upload_file(&file)
        .await
        .unwrap();
    assert_eq!(uploaded.sent, (SIZE + CHUNK) as u64, "one chunk sent twice");
    let done = h.done.lock().unwrap();
    assert_eq!(std::fs::read(done[0].path.as_ref().unwrap()).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_and_touched_file_still_resumes_but_changed_content_does_not() {
    let h = serve().await;
    let file = h.dir.path().join("a.bin");
    let data = write_file(&file, SIZE, 13);
    let state = h.dir.path().join("state");
    let cut = proxy(
        h.addr,
        Faults {
            kill_at: Some(CHUNK as u64 + 1000),
            refuse_after_kill: true,
            ..Faults::default()
        },
    )
    .await;
    let uploader = |addr| {
        Uploader::new(&url(addr))
            .unwrap()
            .chunk_size(CHUNK)
            .backoff(no_retries())
            .state_dir(&state)
    };
    assert!(uploader(cut.addr).upload_file(&file).await.is_err());
    let renamed = h.dir.path().join("b.bin");
    std::fs::rename(&file, &renamed).unwrap();
    std::fs::write(&renamed, &data).unwrap();
    cut.heal();
    let uploaded = uploader(cut.addr).upload_file(&renamed).await.unwrap();
    assert_eq!(uploaded.resumed_from, CHUNK as u64);

    let other = h.dir.path().join("c.bin");
    write_file(&other, SIZE, 17);
    let uploaded = uploader(h.addr).upload_file(&other).await.unwrap();
    assert_eq!(uploaded.resumed_from, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_bytes_percent_speed_and_chunks_in_order() {
    let h = serve().await;
    let file = h.dir.path().join("data.bin");
    write_file(&file, SIZE, 19);
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    Uploader::new(&url(h.addr))
        .unwrap()
        .chunk_size(CHUNK)
        .on_progress({
            let seen = Arc::clone(&seen);
            move |p| seen.lock().unwrap().push(*p)
        })
        .upload_file(&file)
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    for (i, p) in seen.iter().enumerate() {
        assert_eq!(p.chunk, i as u64 + 1);
        assert_eq!(p.chunks, 5);
        assert_eq!(p.total, SIZE as u64);
        assert_eq!(p.sent, p.bytes);
        assert!(p.speed() >= 0.0);
    }
    let last = seen.last().unwrap();
    assert_eq!(last.bytes, SIZE as u64);
    assert!((last.percent() - 100.0).abs() < f64::EPSILON);
    assert_eq!(last.eta(), last.eta().map(|_| Duration::ZERO));
    assert!((seen[0].percent() - 100.0 * CHUNK as f64 / SIZE as f64).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_can_terminate_the_upload_on_the_server() {
    let h = serve().await;
    let file = h.dir.path().join("data.bin");
    write_file(&file, SIZE, 23);
    let state = h.dir.path().join("state");
    for terminate in [false, true] {
        let cancel = CancelHandle::new();
        let result = Uploader::new(&url(h.addr))
            .unwrap()
            .chunk_size(CHUNK)
            .state_dir(&state)
            .cancel_handle(&cancel)
            .terminate_on_cancel(terminate)
            .on_progress({
                let cancel = cancel.clone();
                move |_| cancel.cancel()
            })
            .upload_file(&file)
            .await;
        assert!(matches!(result, Err(ClientError::Cancelled)), "{result:?}");
        let stored = std::fs::read_dir(&h.store).unwrap().count();
        let states = std::fs::read_dir(&state).unwrap().count();
        if terminate {
            assert_eq!(
                (stored, states),
                (0, 0),
                "terminated on the server, state removed"
            );
        } else {
            assert_eq!((stored, states), (2, 1), "kept for a later resume");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_uploads() {
    let h = serve().await;
    let file = h.dir.path().join("empty");
    std::fs::write(&file, b"").unwrap();
    let uploaded = Uploader::new(&url(h.addr))
        .unwrap()
        .upload_file(&file)
        .await
        .unwrap();
    assert_eq!(uploaded.size, 0);
    assert_eq!(
        h.done.lock().unwrap()[0].sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(b""))
    );
}

#[test]
fn only_http_endpoints_are_accepted() {
    assert!(Uploader::new("ftp://example.com/files").is_err());
    assert!(Uploader::new("/files").is_err());
    assert!(Uploader::new("http://127.0.0.1:1/files").is_ok());
    // `https://` with the `rustls` feature (`tests/tls.rs`).
    assert_eq!(
        Uploader::new("https://127.0.0.1:1/files").is_ok(),
        cfg!(feature = "rustls")
    );
}
