//! The tus 1.0.0 server: a tower [`Service`](tower_service::Service) to mount at a path.
//!
//! [`TusServer`] speaks tus core (`OPTIONS`, `HEAD`, `PATCH`) and the extensions
//! creation, creation-with-upload, creation-defer-length, expiration, checksum (`sha1`,
//! `sha256`, `md5`) and termination, over any [`Store`] (the default is
//! [`FileStore`](crate::store::FileStore)).
//!
//! - Chunks are streamed to the store frame by frame (memory does not grow with the chunk)
//!   and committed only after the whole body arrived and its `Upload-Checksum` verified;
//!   anything else leaves the offset unchanged.
//! - One writer per upload, never interleaved: a `PATCH` (or `DELETE`) for an upload another
//!   request is writing waits up to [`ServerConfig::lock_wait`] for it to end, then proceeds
//!   (and meets `409` if the offset moved) or gets `423 Locked`. The wait covers the usual
//!   case of a client retrying a cut chunk before the server noticed the cut.
//! - `Tus-Max-Size` (413), a body deadline and an idle gap limit (408), an authorization
//!   hook per request and at completion, a completion hook with the file's SHA-256.
//! - Ids are generated here; nothing a client sends reaches a file path.
//!
//! | fault | status |
//! | --- | --- |
//! | malformed header, bad metadata base64, unsupported checksum algorithm | 400 |
//! | missing or other `Tus-Resumable` | 412 |
//! | unknown upload | 404 |
//! | expired upload | 410 |
//! | offset mismatch | 409 |
//! | over the size limit | 413 |
//! | `PATCH` with another `Content-Type` | 415 |
//! | concurrent `PATCH`, still running after the lock wait | 423 |
//! | checksum mismatch | 460 |
//!
//! # Example
//!
//! ```no_run
//! use palisade_upload::server::{ServerConfig, TusServer};
//! use palisade_upload::store::FileStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig::new()
//!     .base_path("/files")
//!     .max_size(1 << 30)
//!     .on_complete(|done| async move {
//!         println!("{} complete: {} bytes, sha256 {}", done.id, done.size, hex::encode(done.sha256));
//!     });
//! let server = TusServer::new(FileStore::new("uploads")?, config);
//! let _cleanup = server.spawn_cleanup(std::time::Duration::from_secs(60));
//! // With axum: `Router::new().nest_service("/files", server)`.
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod event;
mod handler;
mod hooks;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

pub use self::config::ServerConfig;
pub use self::error::UploadError;
pub use self::event::UploadEvent;
pub use self::hooks::{Action, AuthRequest, BoxFuture, Clock, Completed, Denied, SystemClock};
use crate::id::UploadId;
use crate::store::{Store, StoreError};

/// A boxed error, as request bodies report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tus 1.0.0 server over a [`Store`]. Clones share the store, the locks and the config.
pub struct TusServer<S> {
    inner: Arc<Inner<S>>,
}

pub(crate) struct Inner<S> {
    pub(crate) store: S,
    pub(crate) config: ServerConfig,
    /// Uploads with a `PATCH`, `POST`-with-body or `DELETE` in progress; the sender is
    /// dropped when the writer ends, which wakes the requests waiting for the upload.
    pub(crate) writers: Mutex<HashMap<UploadId, tokio::sync::watch::Sender<()>>>,
    /// The running SHA-256 of each unfinished upload, with the offset it covers.
    pub(crate) hashers: Mutex<HashMap<UploadId, (u64, sha2::Sha256)>>,
}

impl<S> Clone for TusServer<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for TusServer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TusServer")
            .field("store", &self.inner.store)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl<S: Store> TusServer<S> {
    /// A server over `store`.
    #[must_use]
    pub fn new(store: S, config: ServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                writers: Mutex::default(),
                hashers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Removes every unfinished upload past its expiry that no request is writing to;
    /// returns how many were removed.
    ///
    /// # Errors
    ///
    /// The store's error when listing fails.
    pub async fn remove_expired(&self) -> Result<usize, StoreError> {
        let now = self.inner.config.clock.now();
        let mut removed = 0;
        for info in self.inner.store.list().await? {
            if !info.is_expired(now) {
                continue;
            }
            let Some(_guard) = self.inner.try_lock(info.id) else {
                continue;
            };
            match self.inner.store.remove(&info.id).await {
                Ok(()) | Err(StoreError::NotFound) => {
                    self.inner.forget_hasher(&info.id);
                    tracing::debug!(id = %info.id, "expired upload removed");
                    self.inner.emit(&UploadEvent::Expired { id: info.id });
                    removed += 1;
                }
                Err(e) => tracing::warn!(id = %info.id, error = %e, "expired upload not removed"),
            }
        }
        Ok(removed)
    }

    /// Spawns a task calling [`remove_expired`](Self::remove_expired) every `every`
    /// (first after one period). Abort the handle to stop it.
    pub fn spawn_cleanup(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let server = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(e) = server.remove_expired().await {
                    tracing::warn!(error = %e, "expired upload clean-up failed");
                }
            }
        })
    }
}

/// Holds the one-writer lock of an upload until dropped.
pub(crate) struct WriteGuard<'a, S> {
    inner: &'a Inner<S>,
    id: UploadId,
}

impl<S> Drop for WriteGuard<'_, S> {
    fn drop(&mut self) {
        self.inner
            .writers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl<S> Inner<S> {
    pub(crate) fn emit(&self, event: &UploadEvent) {
        if let Some(listener) = &self.config.listener {
            listener.on_event(event);
        }
    }

    /// The upload's write lock if no request holds it now.
    pub(crate) fn try_lock(&self, id: UploadId) -> Option<WriteGuard<'_, S>> {
        match self
            .writers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
        {
            Entry::Vacant(slot) => {
                slot.insert(tokio::sync::watch::Sender::new(()));
                Some(WriteGuard { inner: self, id })
            }
            // No guard for a refused caller: its drop would free the holder's lock.
            Entry::Occupied(_) => None,
        }
    }

    /// The upload's write lock, waiting up to the configured lock wait for the request
    /// holding it to end.
    pub(crate) async fn lock(&self, id: UploadId) -> Result<WriteGuard<'_, S>, UploadError> {
        let deadline = tokio::time::Instant::now() + self.config.lock_wait;
        loop {
            let mut ended = {
                let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
                match writers.entry(id) {
                    Entry::Vacant(slot) => {
                        slot.insert(tokio::sync::watch::Sender::new(()));
                        return Ok(WriteGuard { inner: self, id });
                    }
                    // Subscribed under the map's lock, so the holder's end cannot be missed.
                    Entry::Occupied(holder) => holder.get().subscribe(),
                }
            };
            if self.config.lock_wait.is_zero() {
                return Err(UploadError::Locked);
            }
            // `changed` fails once the holder's guard dropped the sender.
            let holder_ended = async { while ended.changed().await.is_ok() {} };
            if tokio::time::timeout_at(deadline, holder_ended)
                .await
                .is_err()
            {
                return Err(UploadError::Locked);
            }
        }
    }

    pub(crate) fn forget_hasher(&self, id: &UploadId) -> Option<(u64, sha2::Sha256)> {
        self.hashers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    }

    pub(crate) fn keep_hasher(&self, id: UploadId, offset: u64, hasher: sha2::Sha256) {
        self.hashers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (offset, hasher));
    }
}

impl<S, B> tower_service::Service<Request<B>> for TusServer<S>
where
    S: Store,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(handler::handle(&inner, req).await) })
    }
}
