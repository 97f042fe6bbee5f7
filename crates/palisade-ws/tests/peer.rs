//! Against an external peer: the `ws` package's server on Node.js, a WebSocket stack other
//! than tungstenite, scripted by `tests/peer/server.js` over its stdin and stdout.
//!
//! The test setup installs `ws` with npm into cargo's temp dir for integration tests, once
//! (later runs reuse it), through `palisade_testkit::npm`. Without Node.js or npm, or when
//! the install fails, each test is skipped with the reason; under
//! `PALISADE_REQUIRE_SERVICES=1` it fails instead. These tests run on the real clock (the
//! peer is another process), and they wait for what the peer or the client reports, never
//! for a time.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::backoff::Backoff;
use palisade_core::event::{Listener, listener_fn};
use palisade_testkit::npm::NodeModules;
use palisade_ws::{DisconnectReason, Message, Status, WsConfig, WsEvent, WsHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

/// The `ws` release the peer runs.
const WS_PACKAGE: &str = "ws@8.18.3";
/// A guard against a peer that never starts; not a measurement.
const START_GUARD: Duration = Duration::from_secs(60);

/// What the peer reported so far.
#[derive(Default)]
struct Reports {
    /// Handshakes completed.
    opens: usize,
    /// Text messages received, in order, across connections.
    texts: Vec<String>,
    /// The peer's stderr, for failure messages.
    stderr: String,
}

/// The Node.js `ws` server, a child process that dies with this handle.
struct NodePeer {
    url: String,
    child: Child,
    stdin: ChildStdin,
    reports: Arc<Mutex<Reports>>,
    changed: watch::Receiver<()>,
}

impl NodePeer {
    /// Starts the peer; `None` (the test was skipped) when Node.js or `ws` is unavailable.
    async fn start_or_skip() -> Option<Self> {
        let modules =
            NodeModules::install_or_skip(Path::new(env!("CARGO_TARGET_TMPDIR")), &[WS_PACKAGE])?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peer/server.js");
        let mut child = Command::from(modules.node(script))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not run node: {e}"));
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut stderr = child.stderr.take().expect("piped");
        let reports = Arc::new(Mutex::new(Reports::default()));

        let from_stderr = Arc::clone(&reports);
        tokio::spawn(async move {
            let mut buf = [0; 1024];
            while let Ok(n @ 1..) = stderr.read(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                from_stderr.lock().unwrap().stderr.push_str(&text);
            }
        });

        let first = tokio::time::timeout(START_GUARD, stdout.next_line()).await;
        let port = match first {
            Ok(Ok(Some(line))) => line.strip_prefix("port ").map(str::to_owned),
            _ => None,
        };
        let Some(port) = port else {
            let _ = child.kill().await;
            // Let the stderr task take in what is left.
            tokio::task::yield_now().await;
            panic!(
                "the node peer did not start: {}",
                reports.lock().unwrap().stderr
            );
        };

        let (notify, changed) = watch::channel(());
        let from_stdout = Arc::clone(&reports);
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let mut reports = from_stdout.lock().unwrap();
                if line == "open" {
                    reports.opens += 1;
                } else if let Some(json) = line.strip_prefix("text ") {
                    let text: String = serde_json::from_str(json).expect("a JSON string");
                    reports.texts.push(text);
                }
                drop(reports);
                notify.send_replace(());
            }
        });
        Some(Self {
            url: format!("ws://127.0.0.1:{port}"),
            child,
            stdin,
            reports,
            changed,
        })
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    /// Sends a command (see `server.js`); the peer applies them in order.
    async fn command(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("the peer reads its commands");
        self.stdin.flush().await.unwrap();
    }

    fn texts(&self) -> Vec<String> {
        self.reports.lock().unwrap().texts.clone()
    }

    /// Waits until `n` handshakes completed.
    async fn wait_opens(&mut self, n: usize) {
        self.wait_until(|r| r.opens >= n).await;
    }

    /// Waits until `n` text messages arrived and returns them all.
    async fn wait_texts(&mut self, n: usize) -> Vec<String> {
        self.wait_until(|r| r.texts.len() >= n).await;
        self.texts()
    }

    async fn wait_until(&mut self, done: impl Fn(&Reports) -> bool) {
        let reports = Arc::clone(&self.reports);
        let mut changed = self.changed.clone();
        let reached = changed.wait_for(|()| done(&reports.lock().unwrap())).await;
        if reached.is_err() {
            // The peer's stdout ended: it exited.
            let status = self.child.try_wait();
            panic!(
                "the node peer ended ({status:?}): {}",
                self.reports.lock().unwrap().stderr
            );
        }
    }
}

impl Drop for NodePeer {
    fn drop(&mut self) {
        // SIGKILL to this child's pid; tokio reaps it.
        let _ = self.child.start_kill();
    }
}

/// Records every event a client emits.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<WsEvent>>>);

impl Recorder {
    fn listener(&self) -> impl Listener<WsEvent> + 'static {
        let events = Arc::clone(&self.0);
        listener_fn(move |event: &WsEvent| events.lock().unwrap().push(event.clone()))
    }

    fn events(&self) -> Vec<WsEvent> {
        self.0.lock().unwrap().clone()
    }
}

/// Short constant waits between attempts: the peer is on the real clock.
fn quick_backoff() -> Backoff {
    Backoff::constant(Duration::from_millis(20))
}

async fn wait_status(handle: &WsHandle, f: impl FnMut(&Status) -> bool) -> Status {
    *handle
        .watch_status()
        .wait_for(f)
        .await
        .expect("client alive")
}

#[tokio::test]
async fn echoes_text_and_binary_through_a_node_ws_server() {
    let Some(mut peer) = NodePeer::start_or_skip().await else {
        return;
    };
    let config = WsConfig::builder(peer.url()).build().unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    client.send("hello").await.unwrap();
    client.send(vec![0u8, 1, 2, 255]).await.unwrap();
    client.send("héllo wörld").await.unwrap();
    assert_eq!(messages.recv().await, Some(Message::text("hello")));
    assert_eq!(
        messages.recv().await,
        Some(Message::binary(vec![0u8, 1, 2, 255]))
    );
    assert_eq!(messages.recv().await, Some(Message::text("héllo wörld")));
    assert_eq!(peer.wait_texts(2).await, ["hello", "héllo wörld"]);

    peer.command("push from node").await;
    assert_eq!(messages.recv().await, Some(Message::text("from node")));
    let stats = client.stats();
    assert_eq!((stats.connects, stats.sent, stats.received), (1, 3, 4));
    client.close().await.unwrap();
    assert_eq!(messages.recv().await, None);
}

#[tokio::test]
async fn after_an_abnormal_drop_buffered_messages_arrive_once_in_order() {
    let Some(mut peer) = NodePeer::start_or_skip().await else {
        return;
    };
    let recorder = Recorder::default();
    let config = WsConfig::builder(peer.url())
        .backoff(quick_backoff())
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    client.send("before").await.unwrap();
    assert_eq!(messages.recv().await, Some(Message::text("before")));

    // The peer destroys the TCP connection (no close frame) and refuses to take a new one
    // until told, so what is sent now must wait in the buffer.
    peer.command("refuse").await;
    peer.command("drop").await;
    wait_status(&client, |s| !s.is_connected()).await;
    let sends = ["one", "two", "three"].map(|text| client.send(text));
    assert_eq!(client.stats().buffered, 3);

    peer.command("accept").await;
    for send in sends {
        send.await.unwrap();
    }
    for text in ["one", "two", "three"] {
        assert_eq!(messages.recv().await, Some(Message::text(text)));
    }
    // A last message behind them: anything sent twice would have arrived before it.
    client.send("end").await.unwrap();
    assert_eq!(messages.recv().await, Some(Message::text("end")));
    assert_eq!(
        peer.wait_texts(5).await,
        ["before", "one", "two", "three", "end"]
    );
    assert_eq!(peer.texts().len(), 5);

    let events = recorder.events();
    assert!(events.iter().any(|e| matches!(
        e,
        WsEvent::Disconnected {
            reason: DisconnectReason::Abnormal,
            ..
        }
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        WsEvent::Connected {
            reconnect: true,
            buffered: 3,
            ..
        }
    )));
    let stats = client.stats();
    assert_eq!((stats.reconnects, stats.dropped, stats.buffered), (1, 0, 0));
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_node_peer_that_stops_answering_pings_is_declared_dead_and_replaced() {
    let Some(mut peer) = NodePeer::start_or_skip().await else {
        return;
    };
    let recorder = Recorder::default();
    // A generous timeout against a loaded machine: Node answers a ping within milliseconds.
    let config = WsConfig::builder(peer.url())
        .heartbeat(Duration::from_secs(1), Duration::from_secs(1))
        .backoff(quick_backoff())
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    client.send("still there?").await.unwrap();
    assert_eq!(messages.recv().await, Some(Message::text("still there?")));

    // No pongs and no echoes from now on, with the TCP connection open.
    peer.command("silent").await;
    peer.wait_opens(2).await;
    client.connected().await.unwrap();

    let events = recorder.events();
    assert!(events.iter().any(|e| matches!(e, WsEvent::DeadPeer { .. })));
    assert!(events.iter().any(|e| matches!(
        e,
        WsEvent::Disconnected {
            reason: DisconnectReason::DeadPeer,
            ..
        }
    )));
    assert!(client.stats().dead_peers >= 1);
    // The new connection answers.
    client.send("and now?").await.unwrap();
    assert_eq!(messages.recv().await, Some(Message::text("and now?")));
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_going_away_close_from_node_reconnects_and_a_normal_close_ends_the_client() {
    let Some(mut peer) = NodePeer::start_or_skip().await else {
        return;
    };
    let config = WsConfig::builder(peer.url())
        .backoff(quick_backoff())
        .build()
        .unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();

    peer.command("close 1001").await;
    peer.wait_opens(2).await;
    client.connected().await.unwrap();

    peer.command("close 1000").await;
    assert_eq!(
        wait_status(&client, Status::is_final).await,
        Status::Disconnected
    );
    assert_eq!(messages.recv().await, None);
    assert_eq!(client.stats().reconnects, 1);
}
