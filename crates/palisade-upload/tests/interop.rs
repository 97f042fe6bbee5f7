//! Interop with real tus peers from npm: `tus-js-client` (its Node.js build) uploads to our
//! server, and our client uploads to `@tus/server` with `@tus/file-store`. The peers are
//! Node.js scripts in `tests/interop/`, run as child processes that report on stdout.
//!
//! The packages are installed with npm into cargo's temp dir for integration tests, once
//! (later runs reuse them), by `palisade_testkit::npm`. Without Node.js or npm, or when the
//! install fails, each test is skipped with the reason; under `PALISADE_REQUIRE_SERVICES=1`
//! it fails instead. These tests run on the real clock (the peer is another process) and
//! wait for what a peer or our side reports, never for a time.
//!
//! Neither peer speaks the checksum extension: tus-js-client 4.3.1 has no option to send
//! `Upload-Checksum`, and `@tus/server` 2.4.5 does not advertise `checksum` and ignores the
//! header. Our client sends it on every chunk regardless; the tests show that this works
//! against a server that does not verify it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use palisade_core::event::listener_fn;
use palisade_testkit::npm::NodeModules;
use palisade_upload::client::{CancelHandle, ClientError, Uploader};
use palisade_upload::server::{Completed, ServerConfig, TusServer, UploadEvent};
use palisade_upload::store::FileStore;
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// The pinned peers (all three support Node.js 20.19 and later).
const PACKAGES: [&str; 3] = [
    "tus-js-client@4.3.1",
    "@tus/server@2.4.5",
    "@tus/file-store@2.1.1",
];
/// The chunk size on both sides.
const CHUNK: usize = 1 << 20;
/// Three whole chunks and a short last one.
const SIZE: usize = 3 * CHUNK + 123;
/// What each chunk of a [`SIZE`] upload commits, in order.
const CHUNKS: [u64; 4] = [CHUNK as u64, CHUNK as u64, CHUNK as u64, 123];
/// A guard against a peer that hangs; not a measurement.
const GUARD: Duration = Duration::from_secs(120);

/// The installed peers, or `None`: the test was skipped (see the module docs).
fn peers() -> Option<NodeModules> {
    NodeModules::install_or_skip(Path::new(env!("CARGO_TARGET_TMPDIR")), &PACKAGES)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// A file of `SIZE` bytes no two chunks of which are alike.
fn source_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let bytes: Vec<u8> = (0..SIZE)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    let path = dir.join("source.bin");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
}

/// A Node.js peer: a child process reporting one line at a time on stdout. Dropping it
/// kills the process (by its handle) and reaps it.
struct NodePeer {
    what: &'static str,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Option<ThreadHandle<String>>,
}

impl NodePeer {
    fn spawn(what: &'static str, mut command: Command, stdin: Stdio) -> Self {
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not run node for the {what}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::unbounded_channel();
        // Blocking reads on threads of their own: they end when the process closes its pipes.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            what,
            child: Some(child),
            stdin,
            lines,
            stderr: Some(stderr),
        }
    }

    /// The next line the peer reports; a panic with its stderr if it ended instead.
    async fn line(&mut self) -> String {
        match tokio::time::timeout(GUARD, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => self.fail("ended"),
            Err(_) => self.fail("hung"),
        }
    }

    /// The next line, which must start with `tag` and a space; returns the rest.
    async fn expect(&mut self, tag: &str) -> String {
        let line = self.line().await;
        match line
            .strip_prefix(tag)
            .and_then(|rest| rest.strip_prefix(' '))
        {
            Some(rest) => rest.to_owned(),
            None => self.fail(&format!("reported {line:?} where `{tag} ...` was due")),
        }
    }

    /// Sends `line` to the peer's stdin.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("spawned with a piped stdin");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            self.fail(&format!("does not read its stdin: {e}"));
        }
    }

    /// Every line up to the end of the output, once the process exited successfully.
    async fn finish(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match tokio::time::timeout(GUARD, self.lines.recv()).await {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => break,
                Err(_) => self.fail("hung"),
            }
        }
        // Its stdout is closed: the process is exiting.
        let mut child = self.child.take().expect("finished once");
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        if !status.success() {
            self.fail_with(Some(status), &format!("failed after reporting {lines:?}"));
        }
        lines
    }

    fn fail(&mut self, what: &str) -> ! {
        let status = self.child.take().map(|mut child| {
            let _ = child.kill();
            child.wait().unwrap()
        });
        self.fail_with(status, what)
    }

    fn fail_with(&mut self, status: Option<ExitStatus>, what: &str) -> ! {
        let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default());
        panic!(
            "the node {} {what} ({status:?}); stderr:\n{}",
            self.what,
            stderr.unwrap_or_default()
        );
    }
}

impl Drop for NodePeer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Our `TusServer` over a `FileStore`, on a loopback listener that outlives it, so that it
/// can be restarted on the same address.
struct OurServer {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    store: PathBuf,
    serving: Serving,
}

/// One run of the server: its accept loop and what it reported.
struct Serving {
    accept: JoinHandle<()>,
    completed: mpsc::UnboundedReceiver<Completed>,
    events: Arc<Mutex<Vec<UploadEvent>>>,
}

impl OurServer {
    async fn start(store: PathBuf) -> Self {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let serving = Self::serve(&listener, &store);
        Self {
            addr,
            listener,
            store,
            serving,
        }
    }

    /// Stops the server (its accept loop and every connection) and starts a new one, with
    /// nothing in memory, over the same store directory and listener.
    async fn restart(&mut self) {
        self.serving.accept.abort();
        let _ = (&mut self.serving.accept).await;
        self.serving = Self::serve(&self.listener, &self.store);
    }

    fn serve(listener: &Arc<TcpListener>, store: &Path) -> Serving {
        let (done, completed) = mpsc::unbounded_channel();
        let events: Arc<Mutex<Vec<UploadEvent>>> = Arc::default();
        let config = ServerConfig::new()
            .on_complete(move |c| {
                let _ = done.send(c);
                async {}
            })
            .listener({
                let events = Arc::clone(&events);
                listener_fn(move |e: &UploadEvent| events.lock().unwrap().push(e.clone()))
            });
        let server = TusServer::new(FileStore::new(store).unwrap(), config);
        let listener = Arc::clone(listener);
        let accept = tokio::spawn(async move {
            // Dropped with this task when it is aborted: that aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = TowerToHyperService::new(server.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Serving {
            accept,
            completed,
            events,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/files", self.addr)
    }

    async fn completed(&mut self) -> Completed {
        tokio::time::timeout(GUARD, self.serving.completed.recv())
            .await
            .expect("an upload completes")
            .expect("the server is running")
    }

    fn events(&self) -> Vec<UploadEvent> {
        self.serving.events.lock().unwrap().clone()
    }

    /// The sizes of the committed chunks, in order.
    fn commits(&self) -> Vec<u64> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                UploadEvent::ChunkCommitted { bytes, .. } => Some(*bytes),
                _ => None,
            })
            .collect()
    }

    fn created(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, UploadEvent::Created { .. }))
            .count()
    }
}

/// `s` as a JSON string.
fn json(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The metadata tus-js-client sends; the note checks that UTF-8 survives base64 both ways.
const NOTE: &str = "héllo, wörld ✓ \"quoted\"";

/// Runs `tests/interop/tus_client.mjs` in `mode` (see the script) for `file`.
fn tus_js_client(
    peers: &NodeModules,
    mode: &str,
    endpoint: &str,
    file: &Path,
    storage: Option<&Path>,
) -> NodePeer {
    let storage = storage.map_or_else(String::new, |s| {
        format!(r#","storage":{}"#, json(&s.to_string_lossy()))
    });
    let config = format!(
        r#"{{"mode":{},"endpoint":{},"file":{},"chunkSize":{CHUNK},"metadata":{{"filename":"source.bin","note":{}}}{storage}}}"#,
        json(mode),
        json(endpoint),
        json(&file.to_string_lossy()),
        json(NOTE),
    );
    let mut command = peers.node(script("tus_client.mjs"));
    command.arg(config);
    NodePeer::spawn("tus-js-client", command, Stdio::null())
}

/// Checks what our server stored and reported for a complete upload of `source`.
fn assert_stored(completed: &Completed, source: &[u8]) {
    assert_eq!(completed.size, SIZE as u64);
    assert_eq!(completed.sha256, sha256(source), "the server's SHA-256");
    let path = completed.path.as_ref().expect("a file store keeps a path");
    let stored = std::fs::read(path).unwrap();
    assert!(stored == source, "the stored bytes differ from the source");
    assert_eq!(completed.metadata.get_str("filename"), Some("source.bin"));
    assert_eq!(completed.metadata.get_str("note"), Some(NOTE));
}

#[tokio::test]
async fn tus_js_client_uploads_to_our_server() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, source) = source_file(dir.path());
    let mut server = OurServer::start(dir.path().join("store")).await;

    let mut client = tus_js_client(&peers, "upload", &server.endpoint(), &file, None);
    let lines = client.finish().await;
    let completed = server.completed().await;

    let url = format!("{}/{}", server.endpoint(), completed.id);
    assert_eq!(
        lines,
        [
            format!("url {url}"),
            format!("chunk {CHUNK}"),
            format!("chunk {}", 2 * CHUNK),
            format!("chunk {}", 3 * CHUNK),
            format!("chunk {SIZE}"),
            format!("done {url}"),
        ]
    );
    assert_stored(&completed, &source);
    assert_eq!(server.created(), 1);
    assert_eq!(server.commits(), CHUNKS);
}

#[tokio::test]
async fn tus_js_client_resumes_a_stopped_upload_on_our_server() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, source) = source_file(dir.path());
    let mut server = OurServer::start(dir.path().join("store")).await;

    // The script stops after the first chunk and resumes with a new Upload given the URL.
    let mut client = tus_js_client(&peers, "stop-resume", &server.endpoint(), &file, None);
    let lines = client.finish().await;
    let completed = server.completed().await;

    let url = format!("{}/{}", server.endpoint(), completed.id);
    assert_eq!(
        lines,
        [
            format!("url {url}"),
            format!("chunk {CHUNK}"),
            format!("stopped {CHUNK}"),
            // The new Upload asks our server where to go on.
            format!("head {CHUNK}"),
            format!("url {url}"),
            format!("chunk {}", 2 * CHUNK),
            format!("chunk {}", 3 * CHUNK),
            format!("chunk {SIZE}"),
            format!("done {url}"),
        ]
    );
    assert_stored(&completed, &source);
    // One upload, and every byte sent once: the resume started where our HEAD said.
    assert_eq!(server.created(), 1);
    assert_eq!(server.commits(), CHUNKS);
}

#[tokio::test]
async fn tus_js_client_resumes_after_our_server_restarts() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, source) = source_file(dir.path());
    let storage = dir.path().join("tus-urls.json");
    let mut server = OurServer::start(dir.path().join("store")).await;

    // A first process commits one chunk, keeps the upload URL in its file storage and exits.
    let mut first = tus_js_client(&peers, "stop", &server.endpoint(), &file, Some(&storage));
    let url = first.expect("url").await;
    assert_eq!(
        first.finish().await,
        [format!("chunk {CHUNK}"), format!("stopped {CHUNK}")]
    );
    assert_eq!(server.commits(), [CHUNK as u64]);

    server.restart().await;

    // A second process finds that upload by the file's fingerprint and finishes it against
    // the new server, which knows the upload only from the store directory.
    let mut second = tus_js_client(
        &peers,
        "resume-previous",
        &server.endpoint(),
        &file,
        Some(&storage),
    );
    assert_eq!(
        second.finish().await,
        [
            "previous 1".to_owned(),
            format!("head {CHUNK}"),
            format!("url {url}"),
            format!("chunk {}", 2 * CHUNK),
            format!("chunk {}", 3 * CHUNK),
            format!("chunk {SIZE}"),
            format!("done {url}"),
        ]
    );
    let completed = server.completed().await;
    assert_eq!(url, format!("{}/{}", server.endpoint(), completed.id));
    assert_stored(&completed, &source);
    assert_eq!(server.created(), 0, "the restarted server created nothing");
    assert_eq!(server.commits(), CHUNKS[1..]);
}

#[tokio::test]
async fn tus_js_client_terminates_an_upload_on_our_server() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = source_file(dir.path());
    let store = dir.path().join("store");
    let server = OurServer::start(store.clone()).await;

    let mut client = tus_js_client(&peers, "terminate", &server.endpoint(), &file, None);
    let url = client.expect("url").await;
    assert_eq!(
        client.finish().await,
        [format!("chunk {CHUNK}"), "terminated".to_owned()]
    );
    let created: Vec<String> = server
        .events()
        .iter()
        .filter_map(|e| match e {
            UploadEvent::Created { id, .. } => Some(id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        created
            .iter()
            .map(|id| format!("{}/{id}", server.endpoint()))
            .collect::<Vec<_>>(),
        [url]
    );
    assert!(
        server
            .events()
            .iter()
            .any(|e| matches!(e, UploadEvent::Terminated { id } if id.to_string() == created[0]))
    );
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        0,
        "the upload's bytes and info are gone"
    );
}

/// The `@tus/server` peer with `@tus/file-store` in `store`.
struct NodeServer {
    peer: NodePeer,
    endpoint: String,
    extensions: Vec<String>,
}

impl NodeServer {
    async fn start(peers: &NodeModules, store: &Path) -> Self {
        let mut command = peers.node(script("tus_server.mjs"));
        command.arg(store);
        // Its stdin stays open while it runs: it exits when stdin ends.
        let mut peer = NodePeer::spawn("@tus/server", command, Stdio::piped());
        let extensions = peer.expect("extensions").await;
        let port = peer.expect("port").await;
        Self {
            peer,
            endpoint: format!("http://127.0.0.1:{port}/files"),
            extensions: extensions.split(',').map(str::to_owned).collect(),
        }
    }

    /// Every line the server reported since the last call, up to a `sync` it answers now:
    /// all there is about the requests it has answered.
    async fn sync(&mut self) -> Vec<String> {
        self.peer.send("sync");
        let mut lines = Vec::new();
        loop {
            match self.peer.line().await {
                line if line == "sync" => return lines,
                line => lines.push(line),
            }
        }
    }
}

/// The id at the end of an upload URL.
fn upload_id(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// The `Upload-Checksum` our client sends for each chunk of `source` from `from`.
fn chunk_checksums(source: &[u8], from: usize) -> Vec<String> {
    source[from..]
        .chunks(CHUNK)
        .map(|chunk| format!("sha256 {}", STANDARD.encode(sha256(chunk))))
        .collect()
}

#[tokio::test]
async fn our_client_uploads_to_tus_node_server() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, source) = source_file(dir.path());
    let store = dir.path().join("node-store");
    let mut node = NodeServer::start(&peers, &store).await;
    // The premise: this server does not verify checksums.
    assert!(!node.extensions.iter().any(|e| e == "checksum"));

    let chunks = Arc::new(Mutex::new(Vec::new()));
    let uploaded = Uploader::new(&node.endpoint)
        .unwrap()
        .chunk_size(CHUNK)
        .on_progress({
            let chunks = Arc::clone(&chunks);
            move |p| chunks.lock().unwrap().push((p.chunk, p.chunks, p.bytes))
        })
        .upload_file(&file)
        .await
        .unwrap();

    assert_eq!(uploaded.sha256, sha256(&source), "our client's SHA-256");
    assert_eq!(uploaded.size, SIZE as u64);
    assert_eq!((uploaded.resumed_from, uploaded.sent), (0, SIZE as u64));
    assert_eq!(
        *chunks.lock().unwrap(),
        [
            (1, 4, CHUNK as u64),
            (2, 4, 2 * CHUNK as u64),
            (3, 4, 3 * CHUNK as u64),
            (4, 4, SIZE as u64),
        ]
    );

    let id = upload_id(&uploaded.url).to_owned();
    // One creation, then one PATCH per chunk with its checksum (which @tus/server accepted
    // without checking it), then the completion.
    let mut expected = vec!["request POST -".to_owned()];
    expected.extend(
        chunk_checksums(&source, 0)
            .iter()
            .map(|c| format!("request PATCH {c}")),
    );
    expected.push(format!("finished {id} {SIZE}"));
    assert_eq!(node.sync().await, expected);

    let stored = std::fs::read(store.join(&id)).unwrap();
    assert!(stored == source, "the stored bytes differ from the source");
    let info = std::fs::read_to_string(store.join(format!("{id}.json"))).unwrap();
    assert!(
        info.contains(r#""metadata":{"filename":"source.bin"}"#),
        "{info}"
    );
}

#[tokio::test]
async fn our_client_resumes_on_tus_node_server() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, source) = source_file(dir.path());
    let store = dir.path().join("node-store");
    let state = dir.path().join("state");
    let mut node = NodeServer::start(&peers, &store).await;

    // Cancelled once the first chunk is committed: no further request goes out.
    let cancel = CancelHandle::new();
    let stopped = Uploader::new(&node.endpoint)
        .unwrap()
        .chunk_size(CHUNK)
        .state_dir(&state)
        .cancel_handle(&cancel)
        .on_progress({
            let cancel = cancel.clone();
            move |_| cancel.cancel()
        })
        .upload_file(&file)
        .await;
    assert!(
        matches!(stopped, Err(ClientError::Cancelled)),
        "{stopped:?}"
    );
    let checksums = chunk_checksums(&source, 0);
    assert_eq!(
        node.sync().await,
        [
            "request POST -".to_owned(),
            format!("request PATCH {}", checksums[0]),
        ]
    );

    let uploaded = Uploader::new(&node.endpoint)
        .unwrap()
        .chunk_size(CHUNK)
        .state_dir(&state)
        .upload_file(&file)
        .await
        .unwrap();
    assert_eq!(uploaded.sha256, sha256(&source));
    assert_eq!(
        uploaded.resumed_from, CHUNK as u64,
        "@tus/server's HEAD offset"
    );
    assert_eq!(uploaded.sent, (SIZE - CHUNK) as u64, "every byte sent once");

    let id = upload_id(&uploaded.url).to_owned();
    // The resume asks where to go on, then sends the rest.
    let mut expected = vec!["request HEAD -".to_owned()];
    expected.extend(checksums[1..].iter().map(|c| format!("request PATCH {c}")));
    expected.push(format!("finished {id} {SIZE}"));
    assert_eq!(node.sync().await, expected);
    let stored = std::fs::read(store.join(&id)).unwrap();
    assert!(stored == source, "the stored bytes differ from the source");
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        0,
        "the state file is gone once complete"
    );
}

#[tokio::test]
async fn our_client_terminates_a_cancelled_upload_on_tus_node_server() {
    let Some(peers) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (file, source) = source_file(dir.path());
    let store = dir.path().join("node-store");
    let mut node = NodeServer::start(&peers, &store).await;

    let cancel = CancelHandle::new();
    let stopped = Uploader::new(&node.endpoint)
        .unwrap()
        .chunk_size(CHUNK)
        .cancel_handle(&cancel)
        .terminate_on_cancel(true)
        .on_progress({
            let cancel = cancel.clone();
            move |_| cancel.cancel()
        })
        .upload_file(&file)
        .await;
    assert!(
        matches!(stopped, Err(ClientError::Cancelled)),
        "{stopped:?}"
    );

    let lines = node.sync().await;
    let id = lines
        .last()
        .and_then(|line| line.strip_prefix("terminated "))
        .unwrap_or_else(|| panic!("no termination in {lines:?}"));
    assert_eq!(
        lines,
        [
            "request POST -".to_owned(),
            format!("request PATCH {}", chunk_checksums(&source, 0)[0]),
            "request DELETE -".to_owned(),
            format!("terminated {id}"),
        ]
    );
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        0,
        "the upload's bytes and info are gone"
    );
}
