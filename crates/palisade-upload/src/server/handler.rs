//! Request handling: one function per method.

use std::sync::Arc;

use bytes::{Buf as _, Bytes};
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt as _, Full};
use sha2::Digest as _;
use tokio::io::AsyncReadExt as _;
use tokio::time::Instant;

use super::event::UploadEvent;
use super::hooks::{Action, AuthRequest, Completed};
use super::{BoxError, Inner, UploadError};
use crate::checksum::Checksum;
use crate::id::UploadId;
use crate::metadata::Metadata;
use crate::protocol::{
    CHECKSUM_ALGORITHMS, EXTENSIONS, OFFSET_OCTET_STREAM, TUS_CHECKSUM_ALGORITHM, TUS_EXTENSION,
    TUS_MAX_SIZE, TUS_RESUMABLE, TUS_VERSION, TUS_VERSION_HEADER, UPLOAD_CHECKSUM,
    UPLOAD_DEFER_LENGTH, UPLOAD_EXPIRES, UPLOAD_LENGTH, UPLOAD_METADATA, UPLOAD_OFFSET,
};
use crate::store::{ChunkSink, Store, UploadInfo};

type Resp = Response<Full<Bytes>>;

enum Target {
    Collection,
    Upload(UploadId),
}

pub(crate) async fn handle<S, B>(inner: &Inner<S>, req: Request<B>) -> Resp
where
    S: Store,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let method = req.method().clone();
    let result = route(inner, req).await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let status = e.status();
            if status.is_server_error() {
                tracing::error!(%method, error = %e, "upload request failed");
            } else {
                tracing::debug!(%method, %status, reason = %e, "upload request refused");
            }
            let mut resp = Response::new(Full::new(Bytes::from(e.to_string())));
            *resp.status_mut() = status;
            if matches!(e, UploadError::UnsupportedVersion) {
                resp.headers_mut()
                    .insert(&TUS_VERSION_HEADER, HeaderValue::from_static(TUS_VERSION));
            }
            resp
        }
    };
    resp.headers_mut()
        .insert(&TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    resp
}

fn target(base: &str, path: &str) -> Option<Target> {
    let rest = path.strip_prefix(base).unwrap_or(path);
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Some(Target::Collection);
    }
    let id = rest.strip_prefix('/')?;
    id.parse().ok().map(Target::Upload)
}

async fn route<S, B>(inner: &Inner<S>, req: Request<B>) -> Result<Resp, UploadError>
where
    S: Store,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let target = target(&inner.config.base_path, req.uri().path()).ok_or(UploadError::NotFound)?;
    if req.method() == Method::OPTIONS {
        authorize(inner, head_of(&req), Action::Discover, None).await?;
        return Ok(options(inner));
    }
    match req.headers().get(&TUS_RESUMABLE) {
        Some(v) if v == TUS_VERSION => {}
        _ => return Err(UploadError::UnsupportedVersion),
    }
    match (target, req.method().clone()) {
        (Target::Collection, Method::POST) => create(inner, req).await,
        (Target::Upload(id), Method::HEAD) => head(inner, head_of(&req), id).await,
        (Target::Upload(id), Method::PATCH) => patch(inner, req, id).await,
        (Target::Upload(id), Method::DELETE) => terminate(inner, head_of(&req), id).await,
        _ => Err(UploadError::MethodNotAllowed),
    }
}

/// The parts of a request the authorization hook sees, borrowed (`Sync` whatever the body).
#[derive(Clone, Copy)]
struct Head<'a> {
    method: &'a Method,
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
}

fn head_of<B>(req: &Request<B>) -> Head<'_> {
    Head {
        method: req.method(),
        uri: req.uri(),
        headers: req.headers(),
    }
}

async fn authorize<S>(
    inner: &Inner<S>,
    req: Head<'_>,
    action: Action,
    upload: Option<&UploadInfo>,
) -> Result<(), UploadError> {
    if let Some(hook) = &inner.config.authorize {
        hook(AuthRequest {
            action,
            method: req.method.clone(),
            uri: req.uri.clone(),
            headers: req.headers.clone(),
            upload: upload.cloned(),
        })
        .await?;
    }
    Ok(())
}

fn options<S>(inner: &Inner<S>) -> Resp {
    let mut resp = empty(StatusCode::NO_CONTENT);
    let h = resp.headers_mut();
    h.insert(&TUS_VERSION_HEADER, HeaderValue::from_static(TUS_VERSION));
    h.insert(&TUS_EXTENSION, HeaderValue::from_static(EXTENSIONS));
    h.insert(
        &TUS_CHECKSUM_ALGORITHM,
        HeaderValue::from_static(CHECKSUM_ALGORITHMS),
    );
    if let Some(max) = inner.config.max_size {
        h.insert(&TUS_MAX_SIZE, HeaderValue::from(max));
    }
    resp
}

fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
    reason: &'static str,
) -> Result<Option<&'a str>, UploadError> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| UploadError::BadHeader(reason)))
        .transpose()
}

fn header_u64(
    headers: &HeaderMap,
    name: &http::HeaderName,
    reason: &'static str,
) -> Result<Option<u64>, UploadError> {
    header_str(headers, name, reason)?
        .map(|v| {
            // Digits only: no sign, no spaces, no empty value.
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UploadError::BadHeader(reason));
            }
            v.parse().map_err(|_| UploadError::BadHeader(reason))
        })
        .transpose()
}

fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM))
}

fn parse_checksum(headers: &HeaderMap) -> Result<Option<Checksum>, UploadError> {
    Ok(
        header_str(headers, &UPLOAD_CHECKSUM, "malformed upload-checksum")?
            .map(str::parse)
            .transpose()?,
    )
}

fn check_length<S>(inner: &Inner<S>, length: u64) -> Result<(), UploadError> {
    if inner.config.max_size.is_some_and(|max| length > max) {
        return Err(UploadError::TooLarge("upload-length exceeds tus-max-size"));
    }
    Ok(())
}

fn set_expiry(headers: &mut HeaderMap, info: &UploadInfo) {
    if info.is_complete() {
        return;
    }
    if let Some(at) = info.expires_at
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at))
    {
        headers.insert(&UPLOAD_EXPIRES, v);
    }
}

async fn create<S, B>(inner: &Inner<S>, req: Request<B>) -> Result<Resp, UploadError>
where
    S: Store,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let headers = req.headers();
    let length = header_u64(
        headers,
        &UPLOAD_LENGTH,
        "upload-length must be a non-negative integer",
    )?;
    let deferred = match header_str(
        headers,
        &UPLOAD_DEFER_LENGTH,
        "upload-defer-length must be 1",
    )? {
        None => false,
        Some("1") => true,
        Some(_) => return Err(UploadError::BadHeader("upload-defer-length must be 1")),
    };
    match (length, deferred) {
        (Some(_), true) => {
            return Err(UploadError::BadHeader(
                "send either upload-length or upload-defer-length, not both",
            ));
        }
        (None, false) => {
            return Err(UploadError::BadHeader(
                "upload-length or upload-defer-length: 1 is required",
            ));
        }
        (Some(length), false) => check_length(inner, length)?,
        (None, true) => {}
    }
    let metadata: Metadata = header_str(headers, &UPLOAD_METADATA, "malformed upload-metadata")?
        .unwrap_or_default()
        .parse()?;
    let with_body = is_offset_stream(headers);
    let checksum = if with_body {
        parse_checksum(headers)?
    } else {
        None
    };
    authorize(inner, head_of(&req), Action::Create, None).await?;

    let now = inner.config.clock.now();
    let expires_at = inner.config.expires_after.map(|ttl| now + ttl);
    let id = UploadId::generate();
    let mut info = UploadInfo::new(id, length, metadata, expires_at);
    let guard = inner.lock(id).await?;
    inner.store.create(&info).await?;
    tracing::debug!(%id, ?length, "upload created");
    inner.emit(&UploadEvent::Created { id, length });
    if info.is_complete() {
        complete(inner, &info, sha2::Sha256::new()).await;
    } else if with_body {
        let (parts, body) = req.into_parts();
        let auth_req = Request::from_parts(parts, ());
        // The upload exists now: a refused first chunk still answers 201 with its
        // location and offset, so the client can retry the chunk with `PATCH`.
        match write_chunk(inner, &auth_req, info.clone(), body, checksum).await {
            Ok(written) => info = written,
            Err(e) => tracing::debug!(%id, reason = %e, "first chunk refused"),
        }
    }
    drop(guard);

    let mut resp = empty(StatusCode::CREATED);
    let h = resp.headers_mut();
    let location = format!("{}/{id}", inner.config.base_path);
    h.insert(
        LOCATION,
        HeaderValue::from_str(&location).map_err(|_| UploadError::BadHeader("base path"))?,
    );
    if with_body {
        h.insert(&UPLOAD_OFFSET, HeaderValue::from(info.offset));
    }
    set_expiry(h, &info);
    Ok(resp)
}

async fn load<S: Store>(inner: &Inner<S>, id: &UploadId) -> Result<UploadInfo, UploadError> {
    let info = inner.store.info(id).await?;
    if info.is_expired(inner.config.clock.now()) {
        return Err(UploadError::Expired);
    }
    Ok(info)
}

async fn head<S: Store>(
    inner: &Inner<S>,
    req: Head<'_>,
    id: UploadId,
) -> Result<Resp, UploadError> {
    let info = load(inner, &id).await?;
    authorize(inner, req, Action::Inspect, Some(&info)).await?;
    let mut resp = empty(StatusCode::OK);
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(&UPLOAD_OFFSET, HeaderValue::from(info.offset));
    match info.length {
        Some(length) => h.insert(&UPLOAD_LENGTH, HeaderValue::from(length)),
        None => h.insert(&UPLOAD_DEFER_LENGTH, HeaderValue::from_static("1")),
    };
    if !info.metadata.is_empty()
        && let Ok(v) = HeaderValue::from_str(&info.metadata.to_string())
    {
        h.insert(&UPLOAD_METADATA, v);
    }
    set_expiry(h, &info);
    Ok(resp)
}

async fn patch<S, B>(inner: &Inner<S>, req: Request<B>, id: UploadId) -> Result<Resp, UploadError>
where
    S: Store,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    if !is_offset_stream(req.headers()) {
        return Err(UploadError::UnsupportedMediaType);
    }
    let offset = header_u64(
        req.headers(),
        &UPLOAD_OFFSET,
        "upload-offset must be a non-negative integer",
    )?
    .ok_or(UploadError::BadHeader("upload-offset is required"))?;
    let new_length = header_u64(
        req.headers(),
        &UPLOAD_LENGTH,
        "upload-length must be a non-negative integer",
    )?;
    let checksum = parse_checksum(req.headers())?;
    let guard = inner.lock(id).await?;
    let mut info = load(inner, &id).await?;
    authorize(inner, head_of(&req), Action::Write, Some(&info)).await?;
    if offset != info.offset {
        return Err(UploadError::OffsetMismatch {
            expected: info.offset,
            got: offset,
        });
    }
    match (info.length, new_length) {
        (None, Some(length)) => {
            check_length(inner, length)?;
            if length < info.offset {
                return Err(UploadError::BadHeader(
                    "upload-length is below the upload's offset",
                ));
            }
            info.length = Some(length);
            if info.is_complete() {
                authorize(inner, head_of(&req), Action::Complete, Some(&info)).await?;
            }
            inner.store.save(&info).await?;
            if info.is_complete() {
                // The running hash covers the whole file only if this server saw every
                // byte; after a restart it is gone, and the file is read once instead.
                match inner.forget_hasher(&id) {
                    Some((at, hasher)) if at == info.offset => {
                        complete(inner, &info, hasher).await;
                    }
                    _ => complete_rehash(inner, &info).await,
                }
            }
        }
        (Some(known), Some(length)) if known != length => {
            return Err(UploadError::BadHeader("upload-length cannot be changed"));
        }
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let auth_req = Request::from_parts(parts, ());
    let info = write_chunk(inner, &auth_req, info, body, checksum).await?;
    drop(guard);
    let mut resp = empty(StatusCode::NO_CONTENT);
    resp.headers_mut()
        .insert(&UPLOAD_OFFSET, HeaderValue::from(info.offset));
    set_expiry(resp.headers_mut(), &info);
    Ok(resp)
}

async fn terminate<S: Store>(
    inner: &Inner<S>,
    req: Head<'_>,
    id: UploadId,
) -> Result<Resp, UploadError> {
    let _guard = inner.lock(id).await?;
    let info = inner.store.info(&id).await?;
    authorize(inner, req, Action::Terminate, Some(&info)).await?;
    inner.store.remove(&id).await?;
    inner.forget_hasher(&id);
    tracing::debug!(%id, "upload terminated");
    inner.emit(&UploadEvent::Terminated { id });
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Streams `body` into the store past `info.offset`, verifies it, and commits it.
/// On any failure the chunk is discarded and the upload stays at `info.offset`.
async fn write_chunk<S, B>(
    inner: &Inner<S>,
    req: &Request<()>,
    info: UploadInfo,
    body: B,
    checksum: Option<Checksum>,
) -> Result<UploadInfo, UploadError>
where
    S: Store,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut pending = Pending {
        inner,
        id: info.id,
        settled: false,
    };
    let result = write_verified(inner, req, info, body, checksum, &mut pending).await;
    pending.settled = true;
    if let Err(e) = &result {
        inner.emit(&UploadEvent::ChunkRejected {
            id: pending.id,
            status: e.status().as_u16(),
        });
    }
    result
}

/// The status a [`UploadEvent::ChunkRejected`] carries when the client went away
/// mid-chunk (nginx's "client closed request"; no answer was sent).
const CLIENT_GONE: u16 = 499;

/// A chunk being written: dropped unsettled, it reports the chunk rejected, so no chunk
/// vanishes silently. Hyper drops the request's future when its connection task ends
/// before the handler answers (a client that goes away mid-body is usually seen as a body
/// error first, a 400 reported the ordinary way).
struct Pending<'a, S> {
    inner: &'a Inner<S>,
    id: UploadId,
    /// Committed, or rejected and reported.
    settled: bool,
}

impl<S> Drop for Pending<'_, S> {
    fn drop(&mut self) {
        if !self.settled {
            tracing::debug!(id = %self.id, "client went away mid-chunk; chunk dropped");
            self.inner.emit(&UploadEvent::ChunkRejected {
                id: self.id,
                status: CLIENT_GONE,
            });
        }
    }
}

async fn write_verified<S, B>(
    inner: &Inner<S>,
    req: &Request<()>,
    info: UploadInfo,
    body: B,
    checksum: Option<Checksum>,
    pending: &mut Pending<'_, S>,
) -> Result<UploadInfo, UploadError>
where
    S: Store,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let room = match (info.length, inner.config.max_size) {
        (Some(length), _) => Some(length - info.offset),
        (None, Some(max)) => Some(max.saturating_sub(info.offset)),
        (None, None) => None,
    };
    if let (Some(room), Some(declared)) = (
        room,
        req.headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()),
    ) && declared > room
    {
        return Err(UploadError::TooLarge("chunk exceeds the upload's length"));
    }
    let previous = inner.forget_hasher(&info.id);
    let mut running = match &previous {
        Some((at, h)) if *at == info.offset => Some(h.clone()),
        _ if info.offset == 0 => Some(sha2::Sha256::new()),
        _ => None,
    };
    let restore = |previous: Option<(u64, sha2::Sha256)>| {
        if let Some((at, h)) = previous {
            inner.keep_hasher(info.id, at, h);
        }
    };
    let mut sink = match inner.store.begin(&info).await {
        Ok(sink) => sink,
        Err(e) => {
            restore(previous);
            return Err(e.into());
        }
    };
    let hashers = Hashers {
        chunk: checksum.as_ref().map(|c| c.algorithm().hasher()),
        running: running.take(),
    };
    let read = read_body(inner, body, room, &mut sink, hashers).await;
    let (written, chunk_hasher) = match read {
        // An empty body changes nothing (and must not complete an upload twice).
        Ok((0, _)) => {
            let _ = inner.store.discard(&info, sink).await;
            restore(previous);
            return Ok(info);
        }
        Ok((n, hashers)) => {
            running = hashers.running;
            (n, hashers.chunk)
        }
        Err(e) => {
            let _ = inner.store.discard(&info, sink).await;
            restore(previous);
            return Err(e);
        }
    };
    if let (Some(checksum), Some(hasher)) = (&checksum, chunk_hasher)
        && !checksum.matches(hasher)
    {
        let _ = inner.store.discard(&info, sink).await;
        restore(previous);
        tracing::debug!(id = %info.id, "chunk checksum mismatch");
        return Err(UploadError::ChecksumMismatch);
    }
    let mut next = info.clone();
    next.offset += written;
    if written > 0 {
        next.expires_at = inner
            .config
            .expires_after
            .map(|ttl| inner.config.clock.now() + ttl);
    }
    if next.is_complete()
        && let Err(e) = authorize(inner, head_of(req), Action::Complete, Some(&next)).await
    {
        let _ = inner.store.discard(&info, sink).await;
        restore(previous);
        return Err(e);
    }
    if let Err(e) = inner.store.commit(&next, sink).await {
        restore(previous);
        return Err(e.into());
    }
    pending.settled = true;
    tracing::trace!(id = %next.id, offset = next.offset, "chunk committed");
    inner.emit(&UploadEvent::ChunkCommitted {
        id: next.id,
        bytes: written,
        offset: next.offset,
    });
    match running {
        Some(hasher) if next.is_complete() => complete(inner, &next, hasher).await,
        None if next.is_complete() => complete_rehash(inner, &next).await,
        Some(hasher) => inner.keep_hasher(next.id, next.offset, hasher),
        None => {}
    }
    Ok(next)
}

/// The most bytes gathered into one batch for the hash lanes: 1 MiB. Idle lanes take what
/// has arrived once it is [`HASH_MIN`] or more, so little is left to hash when the body ends.
const HASH_BATCH: usize = 1024 * 1024;

/// The least bytes handed to idle hash lanes: 256 KiB, so a blocking task's cost stays small
/// beside the hashing it does.
const HASH_MIN: usize = 256 * 1024;

/// The hashes a chunk feeds: its own checksum's and the whole file's running SHA-256.
struct Hashers {
    chunk: Option<crate::checksum::Hasher>,
    running: Option<sha2::Sha256>,
}

/// An incremental hash a [`Lane`] feeds.
trait Feed: Send + 'static {
    fn feed(&mut self, data: &[u8]);
}

impl Feed for crate::checksum::Hasher {
    fn feed(&mut self, data: &[u8]) {
        self.update(data);
    }
}

impl Feed for sha2::Sha256 {
    fn feed(&mut self, data: &[u8]) {
        self.update(data);
    }
}

/// One hash, fed batch after batch on the blocking pool: idle with the hasher, or busy
/// with one batch, which hands the hasher back.
enum Lane<H> {
    Idle(H),
    Busy(tokio::task::JoinHandle<H>),
}

impl<H: Feed> Lane<H> {
    fn is_busy(&self) -> bool {
        matches!(self, Self::Busy(task) if !task.is_finished())
    }

    /// The hasher, once the batch in flight (if any) is hashed.
    async fn wait(self) -> Result<H, UploadError> {
        match self {
            Self::Idle(hasher) => Ok(hasher),
            Self::Busy(task) => task.await.map_err(|e| {
                UploadError::Store(crate::store::StoreError::Io(std::io::Error::other(
                    format!("hashing task failed: {e}"),
                )))
            }),
        }
    }

    /// Starts hashing `batch`, after the batch in flight.
    async fn feed(self, batch: Arc<[Bytes]>) -> Result<Self, UploadError> {
        let mut hasher = self.wait().await?;
        Ok(Self::Busy(tokio::task::spawn_blocking(move || {
            for data in batch.iter() {
                hasher.feed(data);
            }
            hasher
        })))
    }
}

/// The lanes of a chunk's hashes: each on a blocking task of its own, so the two hashes of
/// a batch run side by side, while the next batch is received and written. Each lane holds
/// at most one batch; both share it.
struct BackgroundHash {
    chunk: Option<Lane<crate::checksum::Hasher>>,
    running: Option<Lane<sha2::Sha256>>,
}

impl BackgroundHash {
    fn new(hashers: Hashers) -> Self {
        Self {
            chunk: hashers.chunk.map(Lane::Idle),
            running: hashers.running.map(Lane::Idle),
        }
    }

    /// Whether there is nothing to hash.
    fn is_empty(&self) -> bool {
        self.chunk.is_none() && self.running.is_none()
    }

    /// Whether a lane is still hashing its batch.
    fn is_busy(&self) -> bool {
        self.chunk.as_ref().is_some_and(Lane::is_busy)
            || self.running.as_ref().is_some_and(Lane::is_busy)
    }

    /// Starts hashing `batch` in every lane, after each lane's batch in flight.
    async fn feed(self, batch: Vec<Bytes>) -> Result<Self, UploadError> {
        let batch: Arc<[Bytes]> = batch.into();
        let chunk = match self.chunk {
            Some(lane) => Some(lane.feed(Arc::clone(&batch)).await?),
            None => None,
        };
        let running = match self.running {
            Some(lane) => Some(lane.feed(batch).await?),
            None => None,
        };
        Ok(Self { chunk, running })
    }

    /// The hashers, once every batch fed is hashed.
    async fn finish(self) -> Result<Hashers, UploadError> {
        let chunk = match self.chunk {
            Some(lane) => Some(lane.wait().await?),
            None => None,
        };
        let running = match self.running {
            Some(lane) => Some(lane.wait().await?),
            None => None,
        };
        Ok(Hashers { chunk, running })
    }
}

/// Streams `body` into `sink`, hashing it on the side; the bytes written and the hashers.
async fn read_body<S, B>(
    inner: &Inner<S>,
    body: B,
    room: Option<u64>,
    sink: &mut S::Sink,
    hashers: Hashers,
) -> Result<(u64, Hashers), UploadError>
where
    S: Store,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let start = Instant::now();
    let whole = start + inner.config.body_timeout;
    let mut written = 0_u64;
    let mut hashing = BackgroundHash::new(hashers);
    let mut batch = Vec::new();
    let mut batched = 0_usize;
    loop {
        let deadline = whole.min(Instant::now() + inner.config.idle_timeout);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(UploadError::BodyTimeout),
            Ok(None) => None,
            Ok(Some(Err(_))) => return Err(UploadError::BodyFailed),
            Ok(Some(Ok(frame))) => Some(frame),
        };
        let Some(frame) = frame else {
            if !batch.is_empty() {
                hashing = hashing.feed(batch).await?;
            }
            return Ok((written, hashing.finish().await?));
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        // Free for `Bytes` (what hyper's bodies carry); other buffers are copied once.
        let data: Bytes = data.copy_to_bytes(data.remaining());
        written += data.len() as u64;
        if room.is_some_and(|room| written > room) {
            return Err(UploadError::TooLarge("chunk exceeds the upload's length"));
        }
        if !hashing.is_empty() {
            batched += data.len();
            batch.push(data.clone());
        }
        sink.write(data).await?;
        // Hashed at once when the lanes are idle, gathered while they are busy, up to a
        // batch.
        if batched >= HASH_BATCH || (batched >= HASH_MIN && !hashing.is_busy()) {
            hashing = hashing.feed(std::mem::take(&mut batch)).await?;
            batched = 0;
        }
    }
}

async fn complete_rehash<S: Store>(inner: &Inner<S>, info: &UploadInfo) {
    // The server restarted mid-upload, so the running hash is gone: read the file once.
    let mut hasher = sha2::Sha256::new();
    match inner.store.read(&info.id).await {
        Ok(mut reader) => {
            let mut buf = vec![0_u8; 256 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => hasher.update(&buf[..n]),
                    Err(e) => {
                        tracing::error!(id = %info.id, error = %e, "cannot hash completed upload");
                        return;
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(id = %info.id, error = %e, "cannot hash completed upload");
            return;
        }
    }
    complete(inner, info, hasher).await;
}

async fn complete<S: Store>(inner: &Inner<S>, info: &UploadInfo, hasher: sha2::Sha256) {
    let sha256: [u8; 32] = hasher.finalize().into();
    tracing::info!(id = %info.id, size = info.offset, "upload complete");
    inner.emit(&UploadEvent::Completed {
        id: info.id,
        size: info.offset,
    });
    if let Some(hook) = &inner.config.on_complete {
        hook(Completed {
            id: info.id,
            path: inner.store.path(&info.id),
            size: info.offset,
            metadata: info.metadata.clone(),
            sha256,
        })
        .await;
    }
}
