//! Uploading a 256 MiB file over loopback, each iteration one whole upload into a fresh file
//! of a temporary directory (`std::env::temp_dir()`, so `TMPDIR` picks the disk; nothing is
//! fsynced: page-cache durability on every side).
//!
//! - `floor/put`: a hyper client streams the file (256 KiB reads) in one `PUT` to a plain
//!   hyper handler that writes every frame to a `std::fs::File`. No protocol, no hashing:
//!   the least any upload over HTTP/1.1 does.
//! - `palisade/tus-sha256`: `palisade-upload`'s `Uploader` (default 5 MiB chunks, each with
//!   `Upload-Checksum: sha256`, and the whole file's SHA-256 computed along) to its
//!   `TusServer` over a `FileStore` (each chunk verified before it is committed, and the
//!   whole file's SHA-256 computed for the completion hook).
//! - `palisade/tus-no-checksum`: the same without `Upload-Checksum` (the server still keeps
//!   the whole file's SHA-256).
//! - `peer/tus-js-client`: tus-js-client 4.3.1 uploading the same file in 5 MiB chunks to
//!   @tus/server 2.4.5 with @tus/file-store 2.1.1, both on Node.js in two processes
//!   (`benches/upload/tus_js.mjs`); the script times each upload and the bench reports the
//!   sum. Skipped with a note when `node`/`npm` or the packages are not available; the Node
//!   processes start only when this benchmark runs, not when a filter leaves it out.
//!
//! Servers run on their own thread and current-thread runtime, clients on the bench thread
//! on another current-thread runtime: two threads, like two processes on one machine.
//! Every upload is checked (size, and for ours the SHA-256) before anything is measured.

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use palisade_testkit::npm::NodeModules;
use palisade_upload::client::Uploader;
use palisade_upload::server::{ServerConfig, TusServer};
use palisade_upload::store::FileStore;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// 256 MiB, as issue 10 asks.
const SIZE: usize = 256 << 20;
/// The floor client's read size.
const READ: usize = 256 << 10;
/// The peers' chunk size: our client's default.
const CHUNK: usize = palisade_upload::client::DEFAULT_CHUNK_SIZE;
const PEERS: [&str; 3] = [
    "tus-js-client@4.3.1",
    "@tus/server@2.4.5",
    "@tus/file-store@2.1.1",
];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A server on its own thread; stopped when dropped.
struct ServerThread {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Serves every connection with `service`, over HTTP/1.1.
    fn start<S>(service: S) -> Self
    where
        S: tower::Service<Request<Incoming>, Response = Response<http_body_util::Full<Bytes>>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: std::error::Error + Send + Sync + 'static,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let accept = tokio::spawn(async move {
                    while let Ok((socket, _)) = listener.accept().await {
                        socket.set_nodelay(true).unwrap();
                        let service =
                            hyper_util::service::TowerToHyperService::new(service.clone());
                        tokio::spawn(
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(socket), service),
                        );
                    }
                });
                let _ = stopped.await;
                accept.abort();
            });
        });
        Self {
            addr: addr_rx.recv().expect("server address"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The floor's handler: every frame of the body written to `dir/put.bin`.
async fn put(
    dir: Arc<PathBuf>,
    req: Request<Incoming>,
) -> Result<Response<http_body_util::Full<Bytes>>, Infallible> {
    let status = match write_body(&dir.join("put.bin"), req.into_body()).await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut resp = Response::new(http_body_util::Full::new(Bytes::new()));
    *resp.status_mut() = status;
    Ok(resp)
}

async fn write_body(path: &Path, mut body: Incoming) -> Result<(), Box<dyn std::error::Error>> {
    let mut file = std::fs::File::create(path)?;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            file.write_all(&data)?;
        }
    }
    Ok(())
}

/// The floor client's body: the file, read in [`READ`]-byte blocks as hyper asks for them.
struct FileBody {
    file: std::fs::File,
    left: usize,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let mut buf = vec![0_u8; READ.min(self.left)];
        if let Err(e) = self.file.read_exact(&mut buf) {
            return Poll::Ready(Some(Err(e)));
        }
        self.left -= buf.len();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left as u64)
    }
}

/// One `PUT` of `file` on a fresh connection.
async fn put_file(addr: SocketAddr, file: &Path) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let body = FileBody {
        file: std::fs::File::open(file).unwrap(),
        left: SIZE,
    };
    let req = Request::put("/put")
        .header(http::header::HOST, addr.to_string())
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    drop(sender);
    conn.await.unwrap().unwrap();
}

/// A 256 MiB file of pseudo-random bytes (xorshift: nothing compresses or repeats).
fn make_file(dir: &Path) -> (PathBuf, [u8; 32]) {
    let path = dir.join("upload.bin");
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut data = vec![0_u8; SIZE];
    for word in data.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    std::fs::write(&path, &data).unwrap();
    let sha256 = sha256_of(&data);
    (path, sha256)
}

fn sha256_of(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// Removes every file in `dir` (the uploads of the last iteration), outside the timing.
fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let _ = std::fs::remove_file(entry.unwrap().path());
    }
}

/// The tus-js-client + @tus/server pair, driven through `benches/upload/tus_js.mjs`.
struct NodePeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NodePeer {
    /// The peer packages, installed once (or found installed); `None`, with a note, when
    /// `node`/`npm` or the packages are not available.
    fn install() -> Option<NodeModules> {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        match NodeModules::install(base, &PEERS) {
            Ok(modules) => Some(modules),
            Err(e) => {
                eprintln!("peer/tus-js-client skipped: {e}");
                None
            }
        }
    }

    /// Starts the peer pair on `file`, storing into `store`.
    fn start(modules: &NodeModules, file: &Path, store: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("upload/tus_js.mjs");
        let config = format!(
            r#"{{"file":{:?},"store":{:?},"chunkSize":{CHUNK}}}"#,
            file.to_str().expect("a UTF-8 path"),
            store.to_str().expect("a UTF-8 path")
        );
        let mut child = modules
            .node(script)
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the node peer starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut peer = Self {
            child,
            stdin,
            stdout,
        };
        let ready = peer.line();
        assert_eq!(ready, "ready", "the node peer did not start");
        peer
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("node peer output");
        line.trim_end().to_owned()
    }

    /// `n` uploads; the time they took, start to `onSuccess`, each after the last.
    fn uploads(&mut self, n: u64) -> Duration {
        writeln!(self.stdin, "upload {n}").expect("node peer input");
        let line = self.line();
        let nanos = line
            .strip_prefix("elapsed ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("node peer: {line}"));
        Duration::from_nanos(nanos)
    }
}

impl Drop for NodePeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait();
    }
}

fn bench_upload(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("a temporary directory");
    let (file, sha256) = make_file(dir.path());
    let rt = runtime();

    let mut group = c.benchmark_group("upload");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));

    // The floor.
    let put_dir = Arc::new(dir.path().join("put"));
    std::fs::create_dir_all(put_dir.as_path()).unwrap();
    {
        let handler_dir = Arc::clone(&put_dir);
        let server = ServerThread::start(tower::service_fn(move |req| {
            put(Arc::clone(&handler_dir), req)
        }));
        rt.block_on(put_file(server.addr, &file));
        assert_eq!(
            std::fs::metadata(put_dir.join("put.bin")).unwrap().len(),
            SIZE as u64
        );
        group.bench_function("floor/put", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    empty_dir(&put_dir);
                    let start = Instant::now();
                    rt.block_on(put_file(server.addr, &file));
                    total += start.elapsed();
                }
                total
            });
        });
    }

    // Ours.
    let store_dir = dir.path().join("tus");
    let completed = Arc::new(Mutex::new(None::<[u8; 32]>));
    let seen = Arc::clone(&completed);
    let config = ServerConfig::new().on_complete(move |done| {
        *seen.lock().unwrap() = Some(done.sha256);
        async {}
    });
    let server = ServerThread::start(TusServer::new(
        FileStore::new(&store_dir).expect("a store"),
        config,
    ));
    let endpoint = format!("http://{}/files", server.addr);
    for (name, checksums) in [
        ("palisade/tus-sha256", true),
        ("palisade/tus-no-checksum", false),
    ] {
        let uploader = Uploader::new(&endpoint)
            .expect("a valid endpoint")
            .checksum(checksums);
        // Checked once, when the benchmark runs (not when a filter leaves it out).
        let mut checked = false;
        group.bench_function(name, |b| {
            if !checked {
                empty_dir(&store_dir);
                let uploaded = rt.block_on(uploader.upload_file(&file)).expect("upload");
                assert_eq!(uploaded.size, SIZE as u64);
                assert_eq!(uploaded.sha256, sha256);
                assert_eq!(completed.lock().unwrap().take(), Some(sha256));
                checked = true;
            }
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    empty_dir(&store_dir);
                    let start = Instant::now();
                    rt.block_on(uploader.upload_file(&file)).expect("upload");
                    total += start.elapsed();
                }
                total
            });
        });
    }
    drop(server);
    empty_dir(&store_dir);

    // The peer pair, started only when its benchmark runs (not when filtered out).
    let peer_dir = dir.path().join("peer");
    std::fs::create_dir_all(&peer_dir).unwrap();
    if let Some(modules) = NodePeer::install() {
        let mut peer = None;
        group.bench_function("peer/tus-js-client", |b| {
            let peer = peer.get_or_insert_with(|| {
                let mut peer = NodePeer::start(&modules, &file, &peer_dir);
                peer.uploads(1);
                let stored = std::fs::read_dir(&peer_dir)
                    .unwrap()
                    .filter_map(Result::ok)
                    .find(|e| e.path().extension().is_none())
                    .expect("the peer stored the upload");
                assert_eq!(stored.metadata().unwrap().len(), SIZE as u64);
                peer
            });
            b.iter_custom(|iters| peer.uploads(iters));
        });
    }
    group.finish();
}

criterion::criterion_group!(benches, bench_upload);
criterion::criterion_main!(benches);
