//! Hooks: authorization (per request and at completion) and completion, and the clock.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Method, StatusCode, Uri};

use crate::id::UploadId;
use crate::metadata::Metadata;
use crate::store::UploadInfo;

/// A boxed, sendable future, as returned by the hooks.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a request wants to do, as seen by the authorization hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// `OPTIONS`: discover the server's capabilities.
    Discover,
    /// `POST`: create an upload.
    Create,
    /// `HEAD`: read an upload's offset.
    Inspect,
    /// `PATCH`: write a chunk.
    Write,
    /// The last chunk arrived and verified; allowing this marks the upload complete.
    Complete,
    /// `DELETE`: terminate an upload.
    Terminate,
}

/// The request an authorization hook decides on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthRequest {
    /// What the request wants to do.
    pub action: Action,
    /// The request method.
    pub method: Method,
    /// The request URI.
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
    /// The upload, for requests on an existing one (with its offset after the chunk for
    /// [`Action::Complete`]).
    pub upload: Option<UploadInfo>,
}

/// A refusal from the authorization hook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    status: StatusCode,
    reason: String,
}

impl Denied {
    /// `401 Unauthorized` with a reason.
    #[must_use]
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }

    /// `403 Forbidden` with a reason.
    #[must_use]
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            reason: reason.into(),
        }
    }

    /// The status the refusal answers with.
    #[must_use]
    pub const fn status(&self) -> StatusCode {
        self.status
    }
}

/// A finished upload, as handed to the completion hook.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Completed {
    /// The upload's id.
    pub id: UploadId,
    /// Where the bytes are, for stores that keep a file.
    pub path: Option<PathBuf>,
    /// The size in bytes.
    pub size: u64,
    /// The metadata sent at creation.
    pub metadata: Metadata,
    /// The SHA-256 of the whole file.
    pub sha256: [u8; 32],
}

pub(crate) type AuthorizeFn =
    Arc<dyn Fn(AuthRequest) -> BoxFuture<Result<(), Denied>> + Send + Sync>;
pub(crate) type CompleteFn = Arc<dyn Fn(Completed) -> BoxFuture<()> + Send + Sync>;

/// The wall clock the server stamps expiry with. Tests inject their own.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// [`SystemTime::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
