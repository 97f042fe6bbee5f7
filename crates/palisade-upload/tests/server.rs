//! The tus server driven through `tower::ServiceExt::oneshot`, no sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use palisade_core::event::{Event as _, listener_fn};
use palisade_upload::server::{
    Action, Clock, Completed, Denied, ServerConfig, TusServer, UploadEvent,
};
use palisade_upload::store::FileStore;
use sha2::Digest as _;
use tower::ServiceExt as _;

type Server = TusServer<FileStore>;

fn server(config: ServerConfig) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("store")).unwrap();
    (TusServer::new(store, config), dir)
}

fn req(method: &str, uri: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("tus-resumable", "1.0.0")
}

async fn send(server: &Server, req: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
    server.clone().oneshot(req).await.unwrap()
}

async fn call(server: &Server, b: http::request::Builder, body: &[u8]) -> Response<Full<Bytes>> {
    send(
        server,
        b.body(Full::new(Bytes::copy_from_slice(body))).unwrap(),
    )
    .await
}

fn header<'a>(resp: &'a Response<Full<Bytes>>, name: &str) -> &'a str {
    resp.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

async fn create(server: &Server, length: u64) -> String {
    let resp = call(
        server,
        req("POST", "/files").header("upload-length", length),
        b"",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    header(&resp, "location").to_owned()
}

fn patch(url: &str, offset: u64) -> http::request::Builder {
    req("PATCH", url)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", offset)
}

fn checksum(alg: &str, data: &[u8]) -> String {
    let digest = match alg {
        "sha1" => sha1::Sha1::digest(data).to_vec(),
        "sha256" => sha2::Sha256::digest(data).to_vec(),
        "md5" => md5::Md5::digest(data).to_vec(),
        _ => unreachable!(),
    };
    format!("{alg} {}", STANDARD.encode(digest))
}

async fn offset(server: &Server, url: &str) -> u64 {
    let resp = call(server, req("HEAD", url), b"").await;
    assert_eq!(resp.status(), StatusCode::OK);
    header(&resp, "upload-offset").parse().unwrap()
}

#[tokio::test]
async fn options_advertises_version_extensions_checksums_and_max_size() {
    let (server, _dir) = server(ServerConfig::new().max_size(1000));
    let resp = call(
        &server,
        Request::builder().method("OPTIONS").uri("/files"),
        b"",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "tus-version"), "1.0.0");
    assert_eq!(header(&resp, "tus-max-size"), "1000");
    assert_eq!(header(&resp, "tus-checksum-algorithm"), "sha1,sha256,md5");
    for ext in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
    ] {
        assert!(
            header(&resp, "tus-extension").split(',').any(|e| e == ext),
            "{ext}"
        );
    }
}

#[tokio::test]
async fn create_head_and_patch_in_chunks_complete_the_upload() {
    let (server, dir) = server(ServerConfig::new());
    let resp = call(
        &server,
        req("POST", "/files")
            .header("upload-length", 11)
            .header("upload-metadata", "filename aGVsbG8udHh0,empty"),
        b"",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(!header(&resp, "upload-expires").is_empty());
    let url = header(&resp, "location").to_owned();
    assert!(url.starts_with("/files/"));

    let resp = call(&server, req("HEAD", &url), b"").await;
    assert_eq!(header(&resp, "upload-offset"), "0");
    assert_eq!(header(&resp, "upload-length"), "11");
    assert_eq!(header(&resp, "cache-control"), "no-store");
    assert_eq!(
        header(&resp, "upload-metadata"),
        "filename aGVsbG8udHh0,empty"
    );

    let resp = call(&server, patch(&url, 0), b"hello ").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), "6");
    let resp = call(&server, patch(&url, 6), b"world").await;
    assert_eq!(header(&resp, "upload-offset"), "11");
    assert_eq!(offset(&server, &url).await, 11);
    let id = url.rsplit('/').next().unwrap();
    let data = std::fs::read(dir.path().join("store").join(format!("{id}.bin"))).unwrap();
    assert_eq!(data, b"hello world");
}

#[tokio::test]
async fn every_checksum_algorithm_is_verified() {
    let (server, _dir) = server(ServerConfig::new());
    for alg in ["sha1", "sha256", "md5"] {
        let url = create(&server, 4).await;
        let resp = call(
            &server,
            patch(&url, 0).header("upload-checksum", checksum(alg, b"abcd")),
            b"abcd",
        )
        .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{alg}");
        assert_eq!(offset(&server, &url).await, 4);
    }
}

#[tokio::test]
async fn bad_chunk_checksum_is_460_and_leaves_the_offset_unchanged() {
    let events: Arc<Mutex<Vec<UploadEvent>>> = Arc::default();
    let (server, dir) = server(ServerConfig::new().listener(listener_fn({
        let events = Arc::clone(&events);
        move |e: &UploadEvent| events.lock().unwrap().push(e.clone())
    })));
    let url = create(&server, 8).await;
    call(&server, patch(&url, 0), b"good").await;
    let resp = call(
        &server,
        patch(&url, 4).header("upload-checksum", checksum("sha256", b"xxxx")),
        b"evil",
    )
    .await;
    assert_eq!(resp.status().as_u16(), 460);
    assert_eq!(offset(&server, &url).await, 4);
    // The retried chunk lands where the bad one would have.
    let resp = call(
        &server,
        patch(&url, 4).header("upload-checksum", checksum("sha256", b"data")),
        b"data",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let id = url.rsplit('/').next().unwrap();
    let data = std::fs::read(dir.path().join("store").join(format!("{id}.bin"))).unwrap();
    assert_eq!(data, b"gooddata");
    let kinds: Vec<_> = events.lock().unwrap().iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            "created",
            "chunk_committed",
            "chunk_rejected",
            "chunk_committed",
            "completed"
        ]
    );
}

#[tokio::test]
async fn malformed_requests_get_their_statuses() {
    let (server, _dir) = server(ServerConfig::new().max_size(100));
    let url = create(&server, 10).await;
    let unknown = "/files/0123456789abcdef0123456789abcdef";
    let cases: Vec<(&str, http::request::Builder, &[u8], u16)> = vec![
        (
            "no tus-resumable",
            Request::builder().method("HEAD").uri(url.as_str()),
            b"",
            412,
        ),
        (
            "other version",
            Request::builder()
                .method("HEAD")
                .uri(url.as_str())
                .header("tus-resumable", "0.2.2"),
            b"",
            412,
        ),
        ("no length", req("POST", "/files"), b"", 400),
        (
            "negative length",
            req("POST", "/files").header("upload-length", "-1"),
            b"",
            400,
        ),
        (
            "text length",
            req("POST", "/files").header("upload-length", "ten"),
            b"",
            400,
        ),
        (
            "length and defer",
            req("POST", "/files")
                .header("upload-length", "1")
                .header("upload-defer-length", "1"),
            b"",
            400,
        ),
        (
            "defer not 1",
            req("POST", "/files").header("upload-defer-length", "2"),
            b"",
            400,
        ),
        (
            "over max size",
            req("POST", "/files").header("upload-length", "101"),
            b"",
            413,
        ),
        (
            "bad metadata base64",
            req("POST", "/files")
                .header("upload-length", "1")
                .header("upload-metadata", "name !!!"),
            b"",
            400,
        ),
        (
            "duplicate metadata key",
            req("POST", "/files")
                .header("upload-length", "1")
                .header("upload-metadata", "a,a"),
            b"",
            400,
        ),
        (
            "patch no offset",
            req("PATCH", &url).header("content-type", "application/offset+octet-stream"),
            b"x",
            400,
        ),
        (
            "patch bad offset",
            req("PATCH", &url)
                .header("content-type", "application/offset+octet-stream")
                .header("upload-offset", "x"),
            b"x",
            400,
        ),
        (
            "patch signed offset",
            req("PATCH", &url)
                .header("content-type", "application/offset+octet-stream")
                .header("upload-offset", "+0"),
            b"x",
            400,
        ),
        (
            "patch wrong content type",
            req("PATCH", &url)
                .header("upload-offset", "0")
                .header("content-type", "text/plain"),
            b"x",
            415,
        ),
        ("offset mismatch", patch(&url, 3), b"x", 409),
        (
            "unsupported algorithm",
            patch(&url, 0).header("upload-checksum", "crc32 AAAAAA=="),
            b"x",
            400,
        ),
        (
            "malformed checksum",
            patch(&url, 0).header("upload-checksum", "sha1"),
            b"x",
            400,
        ),
        (
            "checksum not base64",
            patch(&url, 0).header("upload-checksum", "sha1 !!"),
            b"x",
            400,
        ),
        (
            "checksum wrong length",
            patch(&url, 0).header("upload-checksum", "sha1 AAAA"),
            b"x",
            400,
        ),
        ("chunk past length", patch(&url, 0), b"0123456789ab", 413),
        (
            "change length",
            patch(&url, 0).header("upload-length", "11"),
            b"",
            400,
        ),
        ("unknown upload head", req("HEAD", unknown), b"", 404),
        ("unknown upload patch", patch(unknown, 0), b"x", 404),
        ("unknown upload delete", req("DELETE", unknown), b"", 404),
        ("not an id", req("HEAD", "/files/not-an-id"), b"", 404),
        ("get", req("GET", &url), b"", 405),
        (
            "post to an upload",
            req("POST", &url).header("upload-length", "1"),
            b"",
            405,
        ),
    ];
    for (name, builder, body, status) in cases {
        let resp = call(&server, builder, body).await;
        assert_eq!(resp.status().as_u16(), status, "{name}");
        assert_eq!(header(&resp, "tus-resumable"), "1.0.0", "{name}");
        if status == 400 {
            let text = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(!text.is_empty(), "{name}: a 400 says why");
        }
    }
    assert_eq!(
        offset(&server, &url).await,
        0,
        "no refused request wrote anything"
    );
}

/// A `PATCH` at offset 0 of `url` whose body is fed through the returned sender; returns
/// once its first `bytes` reached the store, so the upload is held by it.
async fn held_patch(
    server: &Server,
    dir: &tempfile::TempDir,
    url: &str,
    bytes: &'static [u8],
) -> (
    http_body_util::channel::Sender<Bytes, std::io::Error>,
    tokio::task::JoinHandle<Response<Full<Bytes>>>,
    std::path::PathBuf,
) {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    let holder = tokio::spawn({
        let server = server.clone();
        let req = patch(url, 0).body(body).unwrap();
        async move { server.oneshot(req).await.unwrap() }
    });
    tx.send_data(Bytes::from_static(bytes)).await.unwrap();
    let id = url.rsplit('/').next().unwrap().to_owned();
    let bin = dir.path().join("store").join(format!("{id}.bin"));
    while std::fs::metadata(&bin).unwrap().len() < bytes.len() as u64 {
        tokio::task::yield_now().await;
    }
    (tx, holder, bin)
}

#[tokio::test]
async fn concurrent_patch_is_refused_and_never_interleaved() {
    let (server, dir) = server(ServerConfig::new().lock_wait(Duration::ZERO));
    let url = create(&server, 8).await;
    let (mut tx, first, bin) = held_patch(&server, &dir, &url, b"aaaa").await;
    let second = call(&server, patch(&url, 0), b"bbbbbbbb").await;
    assert_eq!(second.status(), StatusCode::LOCKED);
    let delete = call(&server, req("DELETE", &url), b"").await;
    assert_eq!(delete.status(), StatusCode::LOCKED);
    tx.send_data(Bytes::from_static(b"cccc")).await.unwrap();
    drop(tx);
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    assert_eq!(std::fs::read(bin).unwrap(), b"aaaacccc");
    assert_eq!(offset(&server, &url).await, 8);
}

#[tokio::test(start_paused = true)]
async fn a_patch_waits_for_a_cut_one_to_end_and_then_writes_alone() {
    let (server, dir) = server(ServerConfig::new());
    let url = create(&server, 8).await;
    let (tx, cut, bin) = held_patch(&server, &dir, &url, b"aaaa").await;
    // The retry arrives while the cut request still holds the upload.
    let retry = tokio::spawn({
        let server = server.clone();
        let req = patch(&url, 0)
            .body(Full::new(Bytes::from_static(b"bbbbbbbb")))
            .unwrap();
        async move { server.oneshot(req).await.unwrap() }
    });
    // A second of the paused clock: far less than the lock wait, far more than a poll.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!retry.is_finished(), "the retry waits for the holder");
    tx.abort(std::io::Error::other("connection cut"));
    assert_eq!(cut.await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(retry.await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(std::fs::read(bin).unwrap(), b"bbbbbbbb");
    assert_eq!(offset(&server, &url).await, 8);
}

#[tokio::test]
async fn a_patch_whose_client_went_away_mid_body_is_reported_rejected() {
    let events: Arc<Mutex<Vec<UploadEvent>>> = Arc::default();
    let (server, dir) = server(ServerConfig::new().listener(listener_fn({
        let events = Arc::clone(&events);
        move |e: &UploadEvent| events.lock().unwrap().push(e.clone())
    })));
    let url = create(&server, 8).await;
    let (_tx, cut, _) = held_patch(&server, &dir, &url, b"aaaa").await;
    // What hyper does when the client disconnects: the request's future is dropped.
    cut.abort();
    assert!(cut.await.unwrap_err().is_cancelled());
    let id = url.rsplit('/').next().unwrap();
    assert_eq!(
        events.lock().unwrap().as_slice(),
        [
            UploadEvent::Created {
                id: id.parse().unwrap(),
                length: Some(8)
            },
            UploadEvent::ChunkRejected {
                id: id.parse().unwrap(),
                status: 499
            }
        ]
    );
    assert_eq!(offset(&server, &url).await, 0, "nothing of it counts");
    let resp = call(&server, patch(&url, 0), b"bbbbbbbb").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn deferred_length_is_set_by_a_later_patch() {
    let (server, _dir) = server(ServerConfig::new());
    let resp = call(
        &server,
        req("POST", "/files").header("upload-defer-length", "1"),
        b"",
    )
    .await;
    let url = header(&resp, "location").to_owned();
    let resp = call(&server, req("HEAD", &url), b"").await;
    assert_eq!(header(&resp, "upload-defer-length"), "1");
    call(&server, patch(&url, 0), b"abc").await;
    let resp = call(&server, patch(&url, 3).header("upload-length", "6"), b"def").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = call(&server, req("HEAD", &url), b"").await;
    assert_eq!(header(&resp, "upload-length"), "6");
    assert_eq!(header(&resp, "upload-offset"), "6");
}

#[tokio::test]
async fn creation_with_upload_stores_the_first_chunk() {
    let (server, _dir) = server(ServerConfig::new());
    let resp = call(
        &server,
        req("POST", "/files")
            .header("upload-length", 10)
            .header("content-type", "application/offset+octet-stream")
            .header("upload-checksum", checksum("md5", b"12345")),
        b"12345",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "upload-offset"), "5");
    let url = header(&resp, "location").to_owned();
    assert_eq!(offset(&server, &url).await, 5);

    // A bad first chunk still creates the upload, at offset 0.
    let resp = call(
        &server,
        req("POST", "/files")
            .header("upload-length", 10)
            .header("content-type", "application/offset+octet-stream")
            .header("upload-checksum", checksum("md5", b"other")),
        b"12345",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "upload-offset"), "0");
    let url = header(&resp, "location").to_owned();
    assert_eq!(offset(&server, &url).await, 0);
}

#[tokio::test]
async fn termination_removes_the_upload() {
    let (server, dir) = server(ServerConfig::new());
    let url = create(&server, 4).await;
    call(&server, patch(&url, 0), b"ab").await;
    let resp = call(&server, req("DELETE", &url), b"").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = call(&server, req("HEAD", &url), b"").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        std::fs::read_dir(dir.path().join("store")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn completion_hook_gets_path_size_metadata_and_whole_file_sha256() {
    let done: Arc<Mutex<Vec<Completed>>> = Arc::default();
    let (server, _dir) = server(ServerConfig::new().on_complete({
        let done = Arc::clone(&done);
        move |c| {
            done.lock().unwrap().push(c);
            async {}
        }
    }));
    let resp = call(
        &server,
        req("POST", "/files")
            .header("upload-length", 11)
            .header("upload-metadata", "filename aGVsbG8udHh0"),
        b"",
    )
    .await;
    let url = header(&resp, "location").to_owned();
    call(&server, patch(&url, 0), b"hello").await;
    assert!(done.lock().unwrap().is_empty());
    call(&server, patch(&url, 5), b" world").await;
    // An empty PATCH on a complete upload is a no-op, not a second completion.
    let resp = call(&server, patch(&url, 11), b"").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 1);
    let c = &done[0];
    assert_eq!(c.size, 11);
    assert_eq!(c.metadata.get_str("filename"), Some("hello.txt"));
    assert_eq!(
        c.sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(b"hello world"))
    );
    assert_eq!(
        std::fs::read(c.path.as_ref().unwrap()).unwrap(),
        b"hello world"
    );
}

/// A `PATCH` of `url` at `offset` whose body arrives in frames of the given sizes, cut from
/// `data`, with `upload-checksum` set to `sum`.
async fn patch_in_frames(
    server: &Server,
    url: &str,
    offset: u64,
    data: &[u8],
    frames: &[usize],
    sum: &str,
) -> Response<Full<Bytes>> {
    assert_eq!(frames.iter().sum::<usize>(), data.len());
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(2);
    let mut pieces = Vec::new();
    let mut at = 0;
    for &n in frames {
        pieces.push(Bytes::copy_from_slice(&data[at..at + n]));
        at += n;
    }
    let feeder = tokio::spawn(async move {
        for piece in pieces {
            tx.send_data(piece).await.unwrap();
        }
    });
    let req = patch(url, offset)
        .header("upload-checksum", sum)
        .body(body)
        .unwrap();
    let resp = server.clone().oneshot(req).await.unwrap();
    feeder.await.unwrap();
    resp
}

#[tokio::test]
async fn chunks_in_frames_of_every_size_are_verified_and_hashed_whole() {
    // Frames below, around and above the hashing batches (256 KiB to 1 MiB), so every
    // batch boundary and the tail left when the body ends are crossed.
    const K: usize = 1024;
    let first: [usize; 8] = [
        1,
        5,
        100 * K,
        200 * K,
        3 * K,
        1024 * K,
        2048 * K + 7,
        64 * K,
    ];
    let second: [usize; 6] = [1500 * K, 1, 127 * K, 129 * K, 13, 300 * K];
    let (a, b) = (first.iter().sum::<usize>(), second.iter().sum::<usize>());
    let data: Vec<u8> = (0..a + b).map(|i| (i * 31 % 251) as u8).collect();
    let done: Arc<Mutex<Vec<Completed>>> = Arc::default();
    let (server, _dir) = server(ServerConfig::new().on_complete({
        let done = Arc::clone(&done);
        move |c| {
            done.lock().unwrap().push(c);
            async {}
        }
    }));
    let url = create(&server, (a + b) as u64).await;
    let resp = patch_in_frames(
        &server,
        &url,
        0,
        &data[..a],
        &first,
        &checksum("sha256", &data[..a]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset(&server, &url).await, a as u64);

    // One byte wrong in the last frame: refused, and the upload stays where it was.
    let mut bad = data[a..].to_vec();
    *bad.last_mut().unwrap() ^= 1;
    let resp = patch_in_frames(
        &server,
        &url,
        a as u64,
        &bad,
        &second,
        &checksum("sha256", &data[a..]),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 460);
    assert_eq!(offset(&server, &url).await, a as u64);
    assert!(done.lock().unwrap().is_empty());

    let resp = patch_in_frames(
        &server,
        &url,
        a as u64,
        &data[a..],
        &second,
        &checksum("md5", &data[a..]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(&data))
    );
    assert_eq!(std::fs::read(done[0].path.as_ref().unwrap()).unwrap(), data);
}

#[tokio::test]
async fn completion_hook_rehashes_the_file_after_a_restart() {
    let done: Arc<Mutex<Vec<Completed>>> = Arc::default();
    let dir = tempfile::tempdir().unwrap();
    let first = TusServer::new(FileStore::new(dir.path()).unwrap(), ServerConfig::new());
    let url = create(&first, 6).await;
    call(&first, patch(&url, 0), b"abc").await;
    drop(first);
    let config = ServerConfig::new().on_complete({
        let done = Arc::clone(&done);
        move |c| {
            done.lock().unwrap().push(c);
            async {}
        }
    });
    let second = TusServer::new(FileStore::new(dir.path()).unwrap(), config);
    call(&second, patch(&url, 3), b"def").await;
    let sha = done.lock().unwrap()[0].sha256;
    assert_eq!(sha, <[u8; 32]>::from(sha2::Sha256::digest(b"abcdef")));
}

#[tokio::test]
async fn a_deferred_length_that_completes_the_upload_after_a_restart_rehashes_the_file() {
    let done: Arc<Mutex<Vec<Completed>>> = Arc::default();
    let dir = tempfile::tempdir().unwrap();
    let first = TusServer::new(FileStore::new(dir.path()).unwrap(), ServerConfig::new());
    let resp = call(
        &first,
        req("POST", "/files").header("upload-defer-length", "1"),
        b"",
    )
    .await;
    let url = header(&resp, "location").to_owned();
    call(&first, patch(&url, 0), b"abcdef").await;
    drop(first);
    let config = ServerConfig::new().on_complete({
        let done = Arc::clone(&done);
        move |c| {
            done.lock().unwrap().push(c);
            async {}
        }
    });
    // The new server never saw the bytes: the length that completes the upload comes
    // with an empty chunk, and the hook must still get the file's hash.
    let second = TusServer::new(FileStore::new(dir.path()).unwrap(), config);
    let resp = call(&second, patch(&url, 6).header("upload-length", "6"), b"").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(b"abcdef"))
    );
}

#[tokio::test]
async fn authorization_hook_runs_per_request_and_again_at_completion() {
    let seen: Arc<Mutex<Vec<Action>>> = Arc::default();
    let config = ServerConfig::new().authorize({
        let seen = Arc::clone(&seen);
        move |r| {
            seen.lock().unwrap().push(r.action);
            let token = r.headers.get("authorization").cloned();
            let action = r.action;
            async move {
                match (action, token.as_ref().and_then(|t| t.to_str().ok())) {
                    (_, None) => Err(Denied::unauthorized("no token")),
                    (Action::Complete, Some("half")) => Err(Denied::forbidden("may not finish")),
                    _ => Ok(()),
                }
            }
        }
    });
    let (server, _dir) = server(config);
    let resp = call(
        &server,
        req("POST", "/files").header("upload-length", 4),
        b"",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = call(
        &server,
        req("POST", "/files")
            .header("upload-length", 4)
            .header("authorization", "half"),
        b"",
    )
    .await;
    let url = header(&resp, "location").to_owned();
    let resp = call(
        &server,
        patch(&url, 0).header("authorization", "half"),
        b"ab",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = call(
        &server,
        patch(&url, 2).header("authorization", "half"),
        b"cd",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = call(
        &server,
        req("HEAD", &url).header("authorization", "full"),
        b"",
    )
    .await;
    assert_eq!(
        header(&resp, "upload-offset"),
        "2",
        "a refused completion commits nothing"
    );
    let resp = call(
        &server,
        patch(&url, 2).header("authorization", "full"),
        b"cd",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let seen = seen.lock().unwrap();
    assert!(seen.contains(&Action::Create));
    assert!(seen.contains(&Action::Write));
    assert!(seen.contains(&Action::Inspect));
    assert_eq!(seen.iter().filter(|a| **a == Action::Complete).count(), 2);
}

#[tokio::test(start_paused = true)]
async fn stalled_body_times_out_with_408_and_counts_nothing() {
    let (server, _dir) = server(ServerConfig::new().idle_timeout(Duration::from_secs(5)));
    let url = create(&server, 8).await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(4);
    tx.send_data(Bytes::from_static(b"abcd")).await.unwrap();
    let resp = server
        .clone()
        .oneshot(patch(&url, 0).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    drop(tx);
    assert_eq!(offset(&server, &url).await, 0);
}

#[derive(Debug, Clone, Default)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_secs(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + self.0.load(Ordering::SeqCst))
    }
}

#[tokio::test]
async fn expired_uploads_are_gone_and_removed_by_the_clean_up() {
    let clock = ManualClock::default();
    let (server, dir) = server(
        ServerConfig::new()
            .clock(clock.clone())
            .expires_after(Some(Duration::from_secs(60))),
    );
    let stale = create(&server, 4).await;
    let finished = create(&server, 2).await;
    call(&server, patch(&finished, 0), b"ok").await;
    clock.advance(Duration::from_secs(30));
    let fresh = create(&server, 4).await;
    // A write refreshes the expiry.
    clock.advance(Duration::from_secs(40));
    let resp = call(&server, req("HEAD", &stale), b"").await;
    assert_eq!(resp.status(), StatusCode::GONE);
    let resp = call(&server, patch(&stale, 0), b"ab").await;
    assert_eq!(resp.status(), StatusCode::GONE);
    assert_eq!(offset(&server, &fresh).await, 0);
    assert_eq!(server.remove_expired().await.unwrap(), 1);
    let resp = call(&server, req("HEAD", &stale), b"").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        offset(&server, &finished).await,
        2,
        "complete uploads never expire"
    );
    let files = std::fs::read_dir(dir.path().join("store")).unwrap().count();
    assert_eq!(files, 4, "two uploads left, two files each");
}

#[tokio::test(start_paused = true)]
async fn background_clean_up_removes_expired_uploads() {
    let clock = ManualClock::default();
    let (server, _dir) = server(
        ServerConfig::new()
            .clock(clock.clone())
            .expires_after(Some(Duration::from_secs(60))),
    );
    let url = create(&server, 4).await;
    let task = server.spawn_cleanup(Duration::from_secs(10));
    clock.advance(Duration::from_secs(61));
    let mut status = StatusCode::GONE;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        status = call(&server, req("HEAD", &url), b"").await.status();
        if status == StatusCode::NOT_FOUND {
            break;
        }
    }
    task.abort();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn client_values_never_reach_a_file_path() {
    let (server, dir) = server(ServerConfig::new());
    let attempts = [
        "/files/../../etc/passwd",
        "/files/..%2f..%2fetc%2fpasswd",
        "/files/%2e%2e",
        "/files/0123456789abcdef0123456789abcdef/../../x",
        "/files/0123456789ABCDEF0123456789ABCDEF",
        "/files//etc/passwd",
        "/files/0123456789abcdef0123456789abcde\\",
    ];
    for uri in attempts {
        for method in ["HEAD", "PATCH", "DELETE"] {
            let resp = call(&server, patch(uri, 0).method(method), b"x").await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {uri}");
        }
    }
    // Traversal in metadata is stored as data, never used as a name.
    let name = STANDARD.encode("../../../../tmp/evil");
    let resp = call(
        &server,
        req("POST", "/files")
            .header("upload-length", 1)
            .header("upload-metadata", format!("filename {name},../../x {name}")),
        b"",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = header(&resp, "location").to_owned();
    call(&server, patch(&location, 0), b"x").await;
    for entry in std::fs::read_dir(dir.path().join("store")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let (id, ext) = name.split_once('.').unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        assert!(["bin", "info"].contains(&ext), "{name}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing outside the store"
    );
}

#[tokio::test]
async fn mounts_in_an_axum_router() {
    let (server, _dir) = server(ServerConfig::new().base_path("/api/uploads"));
    let app = axum::Router::new().nest_service("/api/uploads", server);
    let resp = app
        .clone()
        .oneshot(
            req("POST", "/api/uploads")
                .header("upload-length", 3)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let url = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(url.starts_with("/api/uploads/"));
    let resp = app
        .oneshot(patch(&url, 0).body(axum::body::Body::from("abc")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["upload-offset"], "3");
}
