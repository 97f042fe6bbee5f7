//! The server's configuration.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::Listener;

use super::event::UploadEvent;
use super::hooks::{AuthRequest, AuthorizeFn, Clock, CompleteFn, Completed, Denied, SystemClock};

/// How a [`TusServer`](super::TusServer) behaves.
///
/// The [`Default`]: mounted at `/files`, no size limit, unfinished uploads expire 24 hours
/// after their last write, a request body must arrive within 5 minutes with no gap longer
/// than 30 seconds, a request for an upload another request is writing waits up to 5 seconds
/// for it, no hooks.
#[derive(Clone)]
pub struct ServerConfig {
    pub(crate) base_path: String,
    pub(crate) max_size: Option<u64>,
    pub(crate) expires_after: Option<Duration>,
    pub(crate) body_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) lock_wait: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) authorize: Option<AuthorizeFn>,
    pub(crate) on_complete: Option<CompleteFn>,
    pub(crate) listener: Option<Arc<dyn Listener<UploadEvent>>>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("base_path", &self.base_path)
            .field("max_size", &self.max_size)
            .field("expires_after", &self.expires_after)
            .field("body_timeout", &self.body_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("lock_wait", &self.lock_wait)
            .field("clock", &self.clock)
            .field("authorize", &self.authorize.is_some())
            .field("on_complete", &self.on_complete.is_some())
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            base_path: "/files".to_owned(),
            max_size: None,
            expires_after: Some(Duration::from_secs(24 * 60 * 60)),
            body_timeout: Duration::from_secs(5 * 60),
            idle_timeout: Duration::from_secs(30),
            lock_wait: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
            authorize: None,
            on_complete: None,
            listener: None,
        }
    }
}

impl ServerConfig {
    /// The default configuration.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The path the server is mounted at, used in `Location` (default `/files`).
    ///
    /// Requests may arrive with or without this prefix (axum's `nest_service` strips it).
    #[must_use]
    pub fn base_path(mut self, path: impl Into<String>) -> Self {
        let path: String = path.into();
        self.base_path = format!("/{}", path.trim_matches('/'));
        if self.base_path == "/" {
            self.base_path.clear();
        }
        self
    }

    /// The largest upload accepted, advertised as `Tus-Max-Size` (default: no limit).
    #[must_use]
    pub const fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// How long after its last write an unfinished upload expires; `None` never
    /// (default 24 hours).
    #[must_use]
    pub const fn expires_after(mut self, ttl: Option<Duration>) -> Self {
        self.expires_after = ttl;
        self
    }

    /// The longest a request body may take as a whole (default 5 minutes).
    #[must_use]
    pub const fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// The longest gap between two pieces of a request body (default 30 seconds).
    #[must_use]
    pub const fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long a `PATCH` or `DELETE` waits for another request writing the same upload to
    /// end before it gets `423 Locked` (default 5 seconds; zero refuses at once). Requests
    /// never interleave: the waiter goes on only after the holder committed or discarded
    /// its chunk, so it meets `409` if the offset moved.
    ///
    /// The wait is for a client retrying a cut chunk: its new request usually arrives
    /// before the server has seen the old connection fail.
    #[must_use]
    pub const fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// The wall clock for expiry (default [`SystemClock`]).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// An authorization hook, called for every request and again, with
    /// [`Action::Complete`](super::Action::Complete), before the last chunk is committed.
    #[must_use]
    pub fn authorize<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(AuthRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Denied>> + Send + 'static,
    {
        self.authorize = Some(Arc::new(move |req| Box::pin(hook(req))));
        self
    }

    /// A hook called once per upload after its last byte is committed.
    #[must_use]
    pub fn on_complete<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Completed) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_complete = Some(Arc::new(move |c| Box::pin(hook(c))));
        self
    }

    /// A listener for [`UploadEvent`]s (with `palisade-core`'s `metrics` feature, a
    /// `MetricsListener` records them).
    #[must_use]
    pub fn listener(mut self, listener: impl Listener<UploadEvent> + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }
}
