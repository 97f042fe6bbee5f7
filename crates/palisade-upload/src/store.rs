//! Where uploads live: the [`Store`] trait and the default [`FileStore`].
//!
//! A store keeps, per upload, its [`UploadInfo`] (length, committed offset, metadata,
//! expiry) and its bytes. The server writes a chunk through a [`ChunkSink`] and then either
//! [commits](Store::commit) it, which makes the new offset durable, or
//! [discards](Store::discard) it, which leaves the upload exactly as before the chunk.
//! Bytes past the committed offset are never counted.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::io::{Seek as _, Write as _};

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::id::UploadId;
use crate::metadata::Metadata;

/// What a store knows about one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadInfo {
    /// The upload's id.
    pub id: UploadId,
    /// The total size in bytes; `None` while deferred (`Upload-Defer-Length`).
    pub length: Option<u64>,
    /// Bytes received, verified and committed.
    pub offset: u64,
    /// The validated metadata sent at creation.
    pub metadata: Metadata,
    /// When an unfinished upload may be removed; `None` when it never expires.
    pub expires_at: Option<SystemTime>,
}

impl UploadInfo {
    /// A new, empty upload.
    #[must_use]
    pub const fn new(
        id: UploadId,
        length: Option<u64>,
        metadata: Metadata,
        expires_at: Option<SystemTime>,
    ) -> Self {
        Self {
            id,
            length,
            offset: 0,
            metadata,
            expires_at,
        }
    }

    /// Whether every byte has arrived.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.length == Some(self.offset)
    }

    /// Whether the upload is unfinished and past its expiry at `now`.
    #[must_use]
    pub fn is_expired(&self, now: SystemTime) -> bool {
        !self.is_complete() && self.expires_at.is_some_and(|at| at <= now)
    }
}

/// A failure of the storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The upload does not exist (never created, terminated, or cleaned up).
    #[error("upload not found")]
    NotFound,
    /// The stored state of an upload cannot be read back.
    #[error("stored upload state is corrupt: {0}")]
    Corrupt(&'static str),
    /// An I/O error.
    #[error("storage i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Receives the bytes of one chunk, in order, before they are committed.
pub trait ChunkSink: Send {
    /// Appends `data` to the pending chunk.
    fn write(&mut self, data: Bytes) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Storage for uploads. The server guarantees one writer per upload at a time.
pub trait Store: Send + Sync + 'static {
    /// The sink of a pending chunk.
    type Sink: ChunkSink;
    /// A reader of an upload's committed bytes.
    type Reader: tokio::io::AsyncRead + Send + Unpin;

    /// Records a new, empty upload.
    fn create(&self, info: &UploadInfo) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The state of an upload.
    fn info(&self, id: &UploadId) -> impl Future<Output = Result<UploadInfo, StoreError>> + Send;

    /// Replaces the stored state of an upload (a deferred length being set, a new expiry).
    fn save(&self, info: &UploadInfo) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Starts a chunk at `info.offset`; anything stored past the offset is dropped.
    fn begin(
        &self,
        info: &UploadInfo,
    ) -> impl Future<Output = Result<Self::Sink, StoreError>> + Send;

    /// Makes a written chunk part of the upload and stores `info` (whose offset already
    /// includes the chunk) in one step.
    fn commit(
        &self,
        info: &UploadInfo,
        sink: Self::Sink,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Drops a written chunk; the upload stays at `info.offset`.
    fn discard(
        &self,
        info: &UploadInfo,
        sink: Self::Sink,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes an upload and its bytes.
    fn remove(&self, id: &UploadId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every upload the store holds (for expiry clean-up).
    fn list(&self) -> impl Future<Output = Result<Vec<UploadInfo>, StoreError>> + Send;

    /// Reads the committed bytes of an upload from the start.
    fn read(&self, id: &UploadId) -> impl Future<Output = Result<Self::Reader, StoreError>> + Send;

    /// Where the bytes of an upload are, for stores that keep them in a file.
    fn path(&self, id: &UploadId) -> Option<PathBuf>;
}

/// The default store: one directory, two files per upload.
///
/// `<id>.bin` holds the bytes and `<id>.info` the state. A chunk is streamed into
/// `<id>.bin` past the committed offset (that region is the chunk's part file): nothing
/// there counts until [`commit`](Store::commit) atomically replaces `<id>.info` (write to a
/// temporary file, then rename). A discarded or interrupted chunk is cut off again
/// before the next one starts. File names are made from server-generated ids only.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    sync: bool,
}

impl FileStore {
    /// A store in `dir`, created if missing.
    ///
    /// # Errors
    ///
    /// The I/O error when the directory cannot be created.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, sync: false })
    }

    /// Whether a commit calls `fsync` on the data before recording the new offset
    /// (default: `false`, the page cache is trusted).
    #[must_use]
    pub const fn sync_on_commit(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    fn info_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.info"))
    }

    async fn write_info(&self, info: &UploadInfo) -> Result<(), StoreError> {
        let write = self.info_writer(info);
        blocking(write).await?;
        Ok(())
    }

    /// Replaces `<id>.info` with `info` (a temporary file, then a rename), in one blocking
    /// step.
    fn info_writer(&self, info: &UploadInfo) -> impl FnOnce() -> io::Result<()> + Send + 'static {
        let path = self.info_path(&info.id);
        let tmp = self.dir.join(format!("{}.info.tmp", info.id));
        let text = encode_info(info);
        move || {
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)
        }
    }
}

fn not_found(e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::NotFound {
        StoreError::NotFound
    } else {
        StoreError::Io(e)
    }
}

fn encode_info(info: &UploadInfo) -> String {
    let length = info
        .length
        .map_or_else(|| "-".to_owned(), |l| l.to_string());
    let expires = info
        .expires_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string());
    format!(
        "tus-upload 1\nlength {length}\noffset {}\nexpires {expires}\nmetadata {}\n",
        info.offset, info.metadata
    )
}

fn decode_info(id: UploadId, text: &str) -> Result<UploadInfo, StoreError> {
    let mut lines = text.lines();
    if lines.next() != Some("tus-upload 1") {
        return Err(StoreError::Corrupt("unknown format"));
    }
    let mut field = |name: &str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(' '))
            .ok_or(StoreError::Corrupt("missing field"))
    };
    let length = match field("length")? {
        "-" => None,
        n => Some(n.parse().map_err(|_| StoreError::Corrupt("bad length"))?),
    };
    let offset = field("offset")?
        .parse()
        .map_err(|_| StoreError::Corrupt("bad offset"))?;
    let expires_at = match field("expires")? {
        "-" => None,
        n => Some(
            UNIX_EPOCH
                + Duration::from_millis(n.parse().map_err(|_| StoreError::Corrupt("bad expiry"))?),
        ),
    };
    let metadata = field("metadata")?
        .parse()
        .map_err(|_| StoreError::Corrupt("bad metadata"))?;
    Ok(UploadInfo {
        id,
        length,
        offset,
        metadata,
        expires_at,
    })
}

/// How many bytes a [`FileSink`] gathers before one blocking write: 1 MiB.
const WRITE_BATCH: usize = 1024 * 1024;

/// Runs `f` on the blocking pool; a panic there becomes an I/O error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    join(tokio::task::spawn_blocking(f)).await
}

async fn join<T>(task: JoinHandle<io::Result<T>>) -> io::Result<T> {
    task.await
        .map_err(|e| io::Error::other(format!("blocking file task failed: {e}")))?
}

/// The pending chunk of a [`FileStore`] upload.
///
/// Each write runs as one blocking task on a plain `std::fs::File`. While one is in flight,
/// the frames that arrive are gathered, up to 1 MiB, into the next: at most two batches
/// are held, and a frame reaches the file as soon as the writer is free.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    /// The file, when no write is in flight.
    file: Option<std::fs::File>,
    /// The write in flight; it hands the file back.
    busy: Option<JoinHandle<io::Result<std::fs::File>>>,
    batch: Vec<Bytes>,
    batched: usize,
}

impl FileSink {
    /// The file, once the write in flight (if any) is done.
    async fn idle(&mut self) -> io::Result<std::fs::File> {
        match (self.busy.take(), self.file.take()) {
            (Some(task), _) => join(task).await,
            (None, Some(file)) => Ok(file),
            (None, None) => Err(io::Error::other("an earlier write of this chunk failed")),
        }
    }

    /// Starts writing the gathered batch.
    async fn send_batch(&mut self) -> io::Result<()> {
        let mut file = self.idle().await?;
        let batch = std::mem::take(&mut self.batch);
        self.batched = 0;
        self.busy = Some(tokio::task::spawn_blocking(move || {
            for data in &batch {
                file.write_all(data)?;
            }
            Ok(file)
        }));
        Ok(())
    }

    /// Writes everything gathered and hands back the file.
    async fn finish(&mut self) -> io::Result<std::fs::File> {
        if !self.batch.is_empty() {
            self.send_batch().await?;
        }
        self.idle().await
    }
}

impl ChunkSink for FileSink {
    async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        self.batched += data.len();
        self.batch.push(data);
        // Written at once when the writer is idle (bytes reach the file without waiting for
        // more), gathered while it is busy, up to a batch.
        let idle = self.busy.as_ref().is_none_or(JoinHandle::is_finished);
        if idle || self.batched >= WRITE_BATCH {
            self.send_batch().await?;
        }
        Ok(())
    }
}

impl Store for FileStore {
    type Sink = FileSink;
    type Reader = tokio::fs::File;

    async fn create(&self, info: &UploadInfo) -> Result<(), StoreError> {
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.data_path(&info.id))
            .await?;
        self.write_info(info).await
    }

    async fn info(&self, id: &UploadId) -> Result<UploadInfo, StoreError> {
        let text = tokio::fs::read_to_string(self.info_path(id))
            .await
            .map_err(not_found)?;
        decode_info(*id, &text)
    }

    async fn save(&self, info: &UploadInfo) -> Result<(), StoreError> {
        self.write_info(info).await
    }

    async fn begin(&self, info: &UploadInfo) -> Result<FileSink, StoreError> {
        let path = self.data_path(&info.id);
        let offset = info.offset;
        let open = path.clone();
        let file = blocking(move || {
            let mut file = std::fs::OpenOptions::new().write(true).open(open)?;
            // Drop whatever an earlier, uncommitted chunk left behind.
            file.set_len(offset)?;
            file.seek(io::SeekFrom::Start(offset))?;
            Ok(file)
        })
        .await
        .map_err(not_found)?;
        Ok(FileSink {
            path,
            file: Some(file),
            busy: None,
            batch: Vec::new(),
            batched: 0,
        })
    }

    async fn commit(&self, info: &UploadInfo, mut sink: FileSink) -> Result<(), StoreError> {
        let file = sink.finish().await?;
        let (sync, write_info) = (self.sync, self.info_writer(info));
        // The data first (when asked), then the new offset: one blocking step.
        blocking(move || {
            if sync {
                file.sync_data()?;
            }
            drop(file);
            write_info()
        })
        .await?;
        Ok(())
    }

    async fn discard(&self, info: &UploadInfo, mut sink: FileSink) -> Result<(), StoreError> {
        // Whatever was written (or failed to be), cut the file back to the offset.
        sink.batch.clear();
        let _ = sink.idle().await;
        let (path, offset) = (sink.path, info.offset);
        blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(offset)
        })
        .await?;
        Ok(())
    }

    async fn remove(&self, id: &UploadId) -> Result<(), StoreError> {
        let info = tokio::fs::remove_file(self.info_path(id))
            .await
            .map_err(not_found);
        match tokio::fs::remove_file(self.data_path(id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        info
    }

    async fn list(&self) -> Result<Vec<UploadInfo>, StoreError> {
        let mut out = Vec::new();
        let mut entries = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".info"))
                .and_then(|n| n.parse::<UploadId>().ok())
            else {
                continue;
            };
            match self.info(&id).await {
                Ok(info) => out.push(info),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn read(&self, id: &UploadId) -> Result<tokio::fs::File, StoreError> {
        tokio::fs::File::open(self.data_path(id))
            .await
            .map_err(not_found)
    }

    fn path(&self, id: &UploadId) -> Option<PathBuf> {
        Some(self.data_path(id))
    }
}
