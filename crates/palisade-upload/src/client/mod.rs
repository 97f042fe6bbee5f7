//! The tus 1.0.0 client: chunked, checksummed, resumable uploads with progress.
//!
//! [`Uploader`] sends a file in chunks (default 5 MiB), each with `Upload-Checksum: sha256`,
//! retrying a failed chunk with `palisade-core`'s [`Backoff`] after asking the server
//! (`HEAD`) how much it holds. With a [state directory](Uploader::state_dir), the file's
//! SHA-256 is computed streaming before the upload: it names the resume state file, so a
//! renamed or touched file still resumes and a changed one does not. Without one there is
//! nothing to look up, and the SHA-256 is computed along the upload from the chunks read.
//! The next chunk is read and hashed on the blocking pool while the current one is sent; its
//! checksum and the whole file's hash run side by side. Progress (bytes, percent, speed,
//! ETA, chunk i of n) goes to a callback;
//! a [`CancelHandle`] stops the upload, optionally terminating it on the server.
//!
//! It speaks to any tus 1.0 server over `http://`, and over `https://` with the `rustls`
//! feature (ring provider, the platform's root certificates, or
//! [`Uploader::tls_config`]).
//!
//! # Example
//!
//! ```no_run
//! use palisade_upload::client::{CancelHandle, Uploader};
//!
//! # async fn run() -> Result<(), palisade_upload::client::ClientError> {
//! let cancel = CancelHandle::new();
//! let uploaded = Uploader::new("http://127.0.0.1:1080/files")?
//!     .state_dir(".uploads")
//!     .cancel_handle(&cancel)
//!     .on_progress(|p| {
//!         eprintln!("{:.1}% chunk {}/{} {:.0} B/s eta {:?}", p.percent(), p.chunk, p.chunks, p.speed(), p.eta());
//!     })
//!     .upload_file("video.mp4")
//!     .await?;
//! println!("{} sha256 {}", uploaded.url, hex::encode(uploaded.sha256));
//! # Ok(())
//! # }
//! ```

mod conn;
mod progress;
#[cfg(feature = "rustls")]
mod tls;

use std::fmt;
use std::io::{self, Read as _, Seek as _};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use palisade_core::backoff::Backoff;
use sha2::Digest as _;
use tokio::time::Instant;

use self::conn::{Answer, Conn};
pub use self::progress::Progress;
use crate::metadata::Metadata;
use crate::protocol::{
    OFFSET_OCTET_STREAM, TUS_RESUMABLE, TUS_VERSION, UPLOAD_CHECKSUM, UPLOAD_LENGTH,
    UPLOAD_METADATA, UPLOAD_OFFSET,
};

/// The default chunk size: 5 MiB.
pub const DEFAULT_CHUNK_SIZE: usize = 5 * 1024 * 1024;

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint or an upload URL is not a usable `http://` URL (or `https://`, with
    /// the `rustls` feature).
    #[error("invalid url: {0}")]
    InvalidUrl(&'static str),
    /// The TLS configuration could not be built, or the server's certificate was refused
    /// (feature `rustls`). Not retried.
    #[cfg(feature = "rustls")]
    #[error("tls error: {0}")]
    Tls(rustls::Error),
    /// Reading the file or the state file failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The server could not be reached.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The HTTP exchange failed (connection reset, closed mid-request).
    #[error("http error: {0}")]
    Http(hyper::Error),
    /// A request took longer than the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The server answered with an unexpected status.
    #[error("server answered {status}: {reason}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The response body, as text.
        reason: String,
    },
    /// The server's answer breaks the protocol (a missing or impossible header).
    #[error("invalid response: {0}")]
    InvalidResponse(&'static str),
    /// The upload was cancelled through its [`CancelHandle`].
    #[error("upload cancelled")]
    Cancelled,
}

impl ClientError {
    /// Whether retrying the chunk may help.
    fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Http(_) | Self::Timeout => true,
            Self::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 408 | 409 | 423 | 429 | 460)
            }
            _ => false,
        }
    }
}

/// Cancels uploads: clone it, give it to [`Uploader::cancel_handle`], call
/// [`cancel`](Self::cancel) from anywhere.
#[derive(Debug, Clone)]
pub struct CancelHandle(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for CancelHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelHandle {
    /// A handle that has not been cancelled.
    #[must_use]
    pub fn new() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(false)))
    }

    /// Cancels every upload using this handle.
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    async fn cancelled(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Uploaded {
    /// The upload's URL.
    pub url: String,
    /// The file's size.
    pub size: u64,
    /// The file's SHA-256.
    pub sha256: [u8; 32],
    /// The offset this run started from (non-zero when it resumed).
    pub resumed_from: u64,
    /// Chunk bytes this run sent, retries included.
    pub sent: u64,
}

type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Uploads files to one tus endpoint. See the [module docs](self).
///
/// Defaults: 5 MiB chunks; retries per chunk with exponential backoff from 200 ms, capped
/// at 10 s, full jitter, at most 8 attempts; 120 s per request; no state file; metadata
/// `filename`; `sha256` chunk checksums; no cancellation; a cancelled upload is left on the
/// server.
#[derive(Clone)]
pub struct Uploader {
    endpoint: Uri,
    chunk_size: usize,
    backoff: Backoff,
    request_timeout: Duration,
    state_dir: Option<PathBuf>,
    metadata: Metadata,
    headers: Vec<(HeaderName, HeaderValue)>,
    progress: Option<ProgressFn>,
    cancel: Option<CancelHandle>,
    terminate_on_cancel: bool,
    checksum: bool,
    #[cfg(feature = "rustls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for Uploader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uploader")
            .field("endpoint", &self.endpoint)
            .field("chunk_size", &self.chunk_size)
            .field("backoff", &self.backoff)
            .field("request_timeout", &self.request_timeout)
            .field("state_dir", &self.state_dir)
            .field("metadata", &self.metadata)
            .field("terminate_on_cancel", &self.terminate_on_cancel)
            .field("checksum", &self.checksum)
            .finish_non_exhaustive()
    }
}

const DEFAULT_ATTEMPTS: NonZeroU32 = match NonZeroU32::new(8) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

impl Uploader {
    /// An uploader for the tus endpoint at `endpoint` (the URL uploads are created at).
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidUrl`] unless `endpoint` is an absolute `http://` URL, or
    /// `https://` with the `rustls` feature.
    pub fn new(endpoint: &str) -> Result<Self, ClientError> {
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|_| ClientError::InvalidUrl("endpoint is not a url"))?;
        check_scheme(&endpoint)?;
        if endpoint.host().is_none() {
            return Err(ClientError::InvalidUrl("endpoint has no host"));
        }
        let backoff =
            Backoff::exponential(Duration::from_millis(200), 2.0, Duration::from_secs(10))
                .map_or_else(
                    |_| Backoff::default(),
                    |b| b.with_jitter(palisade_core::backoff::Jitter::Full),
                )
                .with_max_attempts(DEFAULT_ATTEMPTS);
        Ok(Self {
            endpoint,
            chunk_size: DEFAULT_CHUNK_SIZE,
            backoff,
            request_timeout: Duration::from_secs(120),
            state_dir: None,
            metadata: Metadata::new(),
            headers: Vec::new(),
            progress: None,
            cancel: None,
            terminate_on_cancel: false,
            checksum: true,
            #[cfg(feature = "rustls")]
            tls: None,
        })
    }

    /// The rustls configuration for `https://` (feature `rustls`). By default: the ring
    /// provider, safe default protocol versions and the platform's root certificates.
    #[cfg(feature = "rustls")]
    #[must_use]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The chunk size in bytes (default 5 MiB; at least 1). The client holds up to two
    /// chunks in memory: the one being sent and the next, read ahead.
    #[must_use]
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes.max(1);
        self
    }

    /// Whether each chunk carries `Upload-Checksum: sha256` (default `true`). Without it a
    /// corrupted chunk is not detected by the server; turn it off only for servers that do
    /// not support the checksum extension.
    #[must_use]
    pub const fn checksum(mut self, checksum: bool) -> Self {
        self.checksum = checksum;
        self
    }

    /// The backoff between attempts of one chunk; its attempt and elapsed limits end the
    /// retries.
    #[must_use]
    pub const fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest one request may take (default 120 s).
    #[must_use]
    pub const fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Keeps resume state in `dir`, one small file per upload named after the file's
    /// SHA-256, removed when the upload completes.
    #[must_use]
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Metadata sent at creation (`filename` is added from the path unless set).
    #[must_use]
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// A header sent with every request (`Authorization`, for one).
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Called after every committed chunk.
    #[must_use]
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Stops the upload when `handle` is cancelled.
    #[must_use]
    pub fn cancel_handle(mut self, handle: &CancelHandle) -> Self {
        self.cancel = Some(handle.clone());
        self
    }

    /// Whether a cancelled upload is terminated on the server (`DELETE`) and its state
    /// file removed (default `false`: it can be resumed).
    #[must_use]
    pub const fn terminate_on_cancel(mut self, terminate: bool) -> Self {
        self.terminate_on_cancel = terminate;
        self
    }

    /// Uploads the file at `path`, resuming an earlier upload of the same content.
    ///
    /// # Errors
    ///
    /// The last error once a chunk's retries are exhausted, a non-retryable status, an
    /// I/O error reading the file, or [`ClientError::Cancelled`].
    pub async fn upload_file(&self, path: impl AsRef<Path>) -> Result<Uploaded, ClientError> {
        let path = path.as_ref();
        // The resume key is needed before the first request; without state, the hash is
        // computed along the upload instead of in a pass of its own.
        let (size, known) = if self.state_dir.is_some() {
            let (size, sha256) = hash_file(path.to_owned()).await?;
            (size, Some(sha256))
        } else {
            (tokio::fs::metadata(path).await?.len(), None)
        };
        let mut run = Run {
            up: self,
            conn: Conn::default(),
            url: None,
        };
        #[cfg(feature = "rustls")]
        {
            run.conn.tls.clone_from(&self.tls);
        }
        let result = run.upload(path, size, known).await;
        if matches!(result, Err(ClientError::Cancelled)) && self.terminate_on_cancel {
            if let Some(url) = run.url.clone() {
                match run.terminate(&url).await {
                    Ok(answer) if answer.status.is_success() => {
                        tracing::debug!(%url, "cancelled upload terminated");
                    }
                    Ok(answer) => {
                        tracing::warn!(%url, status = %answer.status, "terminate refused")
                    }
                    Err(e) => tracing::warn!(%url, error = %e, "terminate failed"),
                }
            }
            if let Some(state) = known.and_then(|sha256| self.state_path(&sha256)) {
                let _ = tokio::fs::remove_file(state).await;
            }
        }
        result
    }

    fn state_path(&self, sha256: &[u8; 32]) -> Option<PathBuf> {
        self.state_dir
            .as_ref()
            .map(|d| d.join(format!("{}.tus", hex::encode(sha256))))
    }

    async fn cancellable<T>(
        &self,
        fut: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match &self.cancel {
            None => fut.await,
            Some(c) if c.is_cancelled() => Err(ClientError::Cancelled),
            Some(c) => tokio::select! {
                r = fut => r,
                () = c.cancelled() => Err(ClientError::Cancelled),
            },
        }
    }
}

async fn hash_file(path: PathBuf) -> Result<(u64, [u8; 32]), ClientError> {
    let hashed = tokio::task::spawn_blocking(move || -> io::Result<(u64, [u8; 32])> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0_u8; 1024 * 1024];
        let mut size = 0_u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        Ok((size, hasher.finalize().into()))
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))??;
    Ok(hashed)
}

/// How far the whole file's SHA-256 computed along the upload has come.
struct WholeHash {
    hasher: sha2::Sha256,
    /// Bytes `0..upto` are hashed.
    upto: u64,
}

/// A chunk read from the file, with its checksum header.
struct Chunk {
    offset: u64,
    data: Bytes,
    checksum: Option<HeaderValue>,
    whole: Option<WholeHash>,
}

/// Reads `len` bytes at `offset`, first catching the whole file's hash (when there is one)
/// up on any bytes before `offset` it has not seen.
fn read_chunk(
    file: &std::fs::File,
    offset: u64,
    len: u64,
    mut whole: Option<WholeHash>,
) -> Result<(Bytes, Option<WholeHash>), ClientError> {
    let shrank = || {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file shrank while uploading",
        )
    };
    let mut file = file;
    if let Some(w) = whole.as_mut()
        && w.upto < offset
    {
        file.seek(io::SeekFrom::Start(w.upto))?;
        let mut gap = file.take(offset - w.upto);
        let mut buf = vec![0_u8; 1024 * 1024];
        loop {
            let n = gap.read(&mut buf)?;
            if n == 0 {
                break;
            }
            w.hasher.update(&buf[..n]);
            w.upto += n as u64;
        }
        if w.upto < offset {
            return Err(shrank().into());
        }
    }
    file.seek(io::SeekFrom::Start(offset))?;
    // `len` is at most the chunk size, a `usize`.
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(usize::MAX));
    file.take(len).read_to_end(&mut data)?;
    if (data.len() as u64) < len {
        return Err(shrank().into());
    }
    Ok((Bytes::from(data), whole))
}

/// Runs `f` on the blocking pool; a panic there becomes an I/O error naming `what`.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::Io(io::Error::other(format!("{what} failed: {e}"))))
}

/// Reads the chunk of `len` bytes at `offset` and hashes it: its checksum when `checksum`,
/// and the whole file's hash when `whole` is there (bytes it has seen are not hashed again).
/// The two hashes run side by side on the blocking pool, one pass over the chunk each.
async fn prepare(
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
    checksum: bool,
    whole: Option<WholeHash>,
) -> Result<Chunk, ClientError> {
    let (data, whole) = blocking("chunk reader", move || {
        read_chunk(&file, offset, len, whole)
    })
    .await??;
    let sum = checksum.then(|| {
        let data = data.clone();
        tokio::task::spawn_blocking(move || sha2::Sha256::digest(&data))
    });
    let whole = match whole {
        Some(mut w) if (offset..offset + len).contains(&w.upto) => {
            let data = data.clone();
            blocking("whole-file hash", move || {
                let seen = usize::try_from(w.upto - offset).unwrap_or(usize::MAX);
                w.hasher.update(&data[seen..]);
                w.upto = offset + len;
                w
            })
            .await
            .map(Some)
        }
        other => Ok(other),
    };
    let checksum = match sum {
        Some(task) => {
            let digest = task.await.map_err(|e| {
                ClientError::Io(io::Error::other(format!("chunk checksum failed: {e}")))
            })?;
            let value = format!("sha256 {}", STANDARD.encode(digest));
            Some(
                HeaderValue::from_str(&value)
                    .map_err(|_| ClientError::InvalidResponse("checksum header"))?,
            )
        }
        None => None,
    };
    Ok(Chunk {
        offset,
        data,
        checksum,
        whole: whole?,
    })
}

type ChunkTask = tokio::task::JoinHandle<Result<Chunk, ClientError>>;

fn spawn_read(
    file: &Arc<std::fs::File>,
    offset: u64,
    len: u64,
    checksum: bool,
    whole: Option<WholeHash>,
) -> ChunkTask {
    tokio::spawn(prepare(Arc::clone(file), offset, len, checksum, whole))
}

async fn joined(task: ChunkTask) -> Result<Chunk, ClientError> {
    task.await
        .map_err(|e| ClientError::Io(io::Error::other(format!("chunk reader failed: {e}"))))?
}

struct Run<'a> {
    up: &'a Uploader,
    conn: Conn,
    url: Option<Uri>,
}

/// `http://`, or `https://` with the `rustls` feature.
fn check_scheme(uri: &Uri) -> Result<(), ClientError> {
    match uri.scheme_str() {
        Some("http") => Ok(()),
        #[cfg(feature = "rustls")]
        Some("https") => Ok(()),
        #[cfg(not(feature = "rustls"))]
        Some("https") => Err(ClientError::InvalidUrl(
            "https:// needs the `rustls` feature",
        )),
        _ => Err(ClientError::InvalidUrl(
            "the url must be http:// or https://",
        )),
    }
}

fn parse_u64(answer: &Answer, name: &HeaderName) -> Option<u64> {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn unexpected(answer: Answer) -> ClientError {
    ClientError::Status {
        status: answer.status,
        reason: String::from_utf8_lossy(&answer.body).into_owned(),
    }
}

impl Run<'_> {
    async fn request(
        &mut self,
        method: Method,
        uri: &Uri,
        headers: Vec<(&HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Answer, ClientError> {
        let req = self.build(method, headers, body);
        let timeout = self.up.request_timeout;
        let conn = &mut self.conn;
        self.up.cancellable(conn.send(uri, req, timeout)).await
    }

    /// `DELETE`s the upload, even when cancelled (that is when it is used).
    async fn terminate(&mut self, uri: &Uri) -> Result<Answer, ClientError> {
        let req = self.build(Method::DELETE, Vec::new(), Bytes::new());
        self.conn.send(uri, req, self.up.request_timeout).await
    }

    fn build(
        &self,
        method: Method,
        headers: Vec<(&HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        let h = req.headers_mut();
        h.insert(&TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
        for (name, value) in &self.up.headers {
            h.insert(name, value.clone());
        }
        for (name, value) in headers {
            h.insert(name, value);
        }
        req
    }

    /// Resolves a `Location` against the endpoint.
    fn resolve(&self, location: &str) -> Result<Uri, ClientError> {
        let endpoint = &self.up.endpoint;
        let text = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if location.starts_with('/') {
            format!(
                "{}://{}{location}",
                endpoint.scheme_str().unwrap_or("http"),
                endpoint.authority().map_or("", |a| a.as_str())
            )
        } else {
            format!("{}/{location}", endpoint.to_string().trim_end_matches('/'))
        };
        let uri: Uri = text
            .parse()
            .map_err(|_| ClientError::InvalidResponse("location is not a url"))?;
        check_scheme(&uri)?;
        if endpoint.scheme_str() == Some("https") && uri.scheme_str() != Some("https") {
            // The headers (`Authorization`, for one) and the file stay encrypted.
            return Err(ClientError::InvalidResponse(
                "an https:// endpoint gave an http:// upload url",
            ));
        }
        Ok(uri)
    }

    async fn head(&mut self, url: &Uri) -> Result<Answer, ClientError> {
        self.request(Method::HEAD, url, Vec::new(), Bytes::new())
            .await
    }

    /// The server's offset of a resumable upload, or `None` if it cannot be resumed.
    async fn resume_offset(&mut self, url: &Uri, size: u64) -> Result<Option<u64>, ClientError> {
        let answer = self.head(url).await?;
        match answer.status {
            s if s.is_success() => {
                if parse_u64(&answer, &UPLOAD_LENGTH).is_some_and(|l| l != size) {
                    return Ok(None);
                }
                Ok(parse_u64(&answer, &UPLOAD_OFFSET).filter(|o| *o <= size))
            }
            StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::FORBIDDEN => Ok(None),
            _ => Err(unexpected(answer)),
        }
    }

    async fn create(&mut self, path: &Path, size: u64) -> Result<Uri, ClientError> {
        let mut metadata = self.up.metadata.clone();
        if metadata.get("filename").is_none()
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            metadata
                .insert("filename", name)
                .map_err(|_| ClientError::InvalidUrl("metadata"))?;
        }
        let mut headers = vec![(&UPLOAD_LENGTH, HeaderValue::from(size))];
        if !metadata.is_empty()
            && let Ok(v) = HeaderValue::from_str(&metadata.to_string())
        {
            headers.push((&UPLOAD_METADATA, v));
        }
        let endpoint = self.up.endpoint.clone();
        let answer = self
            .request(Method::POST, &endpoint, headers, Bytes::new())
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(unexpected(answer));
        }
        let location = answer
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ClientError::InvalidResponse("201 without a location"))?
            .to_owned();
        self.resolve(&location)
    }

    async fn upload(
        &mut self,
        path: &Path,
        size: u64,
        known: Option<[u8; 32]>,
    ) -> Result<Uploaded, ClientError> {
        let state = known.and_then(|sha256| self.up.state_path(&sha256));
        let mut start = None;
        if let Some(state) = &state
            && let Ok(saved) = tokio::fs::read_to_string(state).await
            && let Ok(url) = saved.trim().parse::<Uri>()
            && let Some(offset) = self.resume_offset(&url, size).await?
        {
            tracing::debug!(%url, offset, "resuming upload");
            start = Some((url, offset));
        }
        let (url, mut offset) = match start {
            Some(found) => found,
            None => {
                let url = self.create(path, size).await?;
                if let Some(state) = &state {
                    if let Some(dir) = state.parent() {
                        tokio::fs::create_dir_all(dir).await?;
                    }
                    let tmp = state.with_extension("tmp");
                    tokio::fs::write(&tmp, url.to_string()).await?;
                    tokio::fs::rename(&tmp, state).await?;
                }
                (url, 0)
            }
        };
        self.url = Some(url.clone());
        let resumed_from = offset;
        let chunk_size = self.up.chunk_size as u64;
        let chunks = size.div_ceil(chunk_size).max(1);
        let started = Instant::now();
        let mut sent = 0_u64;
        let mut committed = 0_u64;
        let open = path.to_owned();
        let file = Arc::new(
            tokio::task::spawn_blocking(move || std::fs::File::open(open))
                .await
                .map_err(|e| io::Error::other(e.to_string()))??,
        );
        let checksums = self.up.checksum;
        let mut whole = known.is_none().then(|| WholeHash {
            hasher: sha2::Sha256::new(),
            upto: 0,
        });
        // The chunk read ahead while the one before it was sent.
        let mut ahead: Option<ChunkTask> = None;
        'chunks: while offset < size {
            let len = chunk_size.min(size - offset);
            let ready = match ahead.take() {
                Some(task) => {
                    let chunk = joined(task).await?;
                    if chunk.offset == offset && chunk.data.len() as u64 == len {
                        Some(chunk)
                    } else {
                        // The server moved the offset elsewhere: read afresh.
                        whole = chunk.whole;
                        None
                    }
                }
                None => None,
            };
            let chunk = match ready {
                Some(chunk) => chunk,
                None => joined(spawn_read(&file, offset, len, checksums, whole.take())).await?,
            };
            let Chunk {
                data,
                checksum,
                whole: hashed,
                ..
            } = chunk;
            whole = hashed;
            // Read (and hash) the next chunk while this one is sent.
            let next = offset + len;
            if next < size {
                let next_len = chunk_size.min(size - next);
                ahead = Some(spawn_read(&file, next, next_len, checksums, whole.take()));
            }
            let mut delays = self.up.backoff.delays();
            let first_try = Instant::now();
            loop {
                let mut headers = vec![
                    (&CONTENT_TYPE, HeaderValue::from_static(OFFSET_OCTET_STREAM)),
                    (&UPLOAD_OFFSET, HeaderValue::from(offset)),
                ];
                if let Some(checksum) = &checksum {
                    headers.push((&UPLOAD_CHECKSUM, checksum.clone()));
                }
                sent += len;
                let result = self
                    .request(Method::PATCH, &url, headers, data.clone())
                    .await
                    .and_then(|answer| {
                        if answer.status.is_success() {
                            parse_u64(&answer, &UPLOAD_OFFSET)
                                .filter(|o| *o > offset && *o <= size)
                                .ok_or(ClientError::InvalidResponse(
                                    "bad upload-offset after patch",
                                ))
                        } else {
                            Err(unexpected(answer))
                        }
                    });
                let error = match result {
                    Ok(next) => {
                        committed += next - offset;
                        offset = next;
                        self.report(offset, size, committed, resumed_from, started, chunks);
                        continue 'chunks;
                    }
                    Err(e) if e.is_transient() => e,
                    Err(e) => return Err(e),
                };
                let Some(delay) = delays.next_after(first_try.elapsed()) else {
                    return Err(error);
                };
                tracing::debug!(error = %error, ?delay, offset, "chunk failed; retrying");
                self.up
                    .cancellable(async {
                        tokio::time::sleep(delay).await;
                        Ok(())
                    })
                    .await?;
                // Learn what the server holds: maybe the chunk arrived after all.
                match self.head(&url).await {
                    Ok(answer) if answer.status.is_success() => {
                        let Some(server) =
                            parse_u64(&answer, &UPLOAD_OFFSET).filter(|o| *o <= size)
                        else {
                            return Err(ClientError::InvalidResponse("bad upload-offset in head"));
                        };
                        if server != offset {
                            committed += server.saturating_sub(offset);
                            offset = server;
                            continue 'chunks;
                        }
                    }
                    Ok(answer) if !answer.status.is_server_error() => {
                        return Err(unexpected(answer));
                    }
                    // The next attempt of the chunk will meet the same fault, or not.
                    Ok(_) | Err(_) => {}
                }
            }
        }
        let sha256 = match known {
            Some(sha256) => sha256,
            None => {
                if let Some(task) = ahead.take() {
                    whole = joined(task).await?.whole;
                }
                // Hashes whatever the upload skipped (the server already held it).
                let caught_up = joined(spawn_read(&file, size, 0, false, whole.take())).await?;
                caught_up
                    .whole
                    .map(|w| w.hasher.finalize().into())
                    .ok_or(ClientError::Io(io::Error::other("whole-file hash lost")))?
            }
        };
        if let Some(state) = &state {
            let _ = tokio::fs::remove_file(state).await;
        }
        if size == 0 {
            self.report(0, 0, 0, 0, started, chunks);
        }
        Ok(Uploaded {
            url: url.to_string(),
            size,
            sha256,
            resumed_from,
            sent,
        })
    }

    fn report(
        &self,
        bytes: u64,
        total: u64,
        sent: u64,
        resumed_from: u64,
        started: Instant,
        chunks: u64,
    ) {
        if let Some(f) = &self.up.progress {
            let chunk_size = self.up.chunk_size as u64;
            f(&Progress {
                bytes,
                total,
                sent,
                resumed_from,
                elapsed: started.elapsed(),
                chunk: bytes.div_ceil(chunk_size).min(chunks),
                chunks,
            });
        }
    }
}
