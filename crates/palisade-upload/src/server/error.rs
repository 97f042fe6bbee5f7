//! The server's typed errors and the status each one answers with.

use http::StatusCode;

use crate::checksum::ChecksumError;
use crate::metadata::MetadataError;
use crate::store::StoreError;

use super::hooks::Denied;

/// Why the server refused a request. Each variant maps to one status
/// ([`status`](Self::status)); the response body is the `Display` text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// `Tus-Resumable` is missing or names another version: 412.
    #[error("tus-resumable must be 1.0.0")]
    UnsupportedVersion,
    /// A header is missing or malformed: 400 with the reason.
    #[error("{0}")]
    BadHeader(&'static str),
    /// `Upload-Metadata` is malformed: 400.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// `Upload-Checksum` is malformed or names an unsupported algorithm: 400.
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    /// The chunk's digest differs from `Upload-Checksum`: 460; the offset is unchanged.
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// `Upload-Offset` is not the server's offset: 409.
    #[error("upload-offset {got} does not match the server's offset {expected}")]
    OffsetMismatch {
        /// The server's offset.
        expected: u64,
        /// The offset the request sent.
        got: u64,
    },
    /// No such upload: 404.
    #[error("upload not found")]
    NotFound,
    /// The upload expired: 410.
    #[error("upload expired")]
    Expired,
    /// The upload or chunk is larger than allowed: 413.
    #[error("{0}")]
    TooLarge(&'static str),
    /// A `PATCH` without `Content-Type: application/offset+octet-stream`: 415.
    #[error("content-type must be application/offset+octet-stream")]
    UnsupportedMediaType,
    /// Another request was still writing to this upload when the lock wait ended: 423.
    #[error("upload is locked by another request")]
    Locked,
    /// A method the resource does not support: 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request body did not arrive in time: 408; nothing of it is counted.
    #[error("request body timed out")]
    BodyTimeout,
    /// The request body failed (the client went away): 400; nothing of it is counted.
    #[error("request body failed")]
    BodyFailed,
    /// The authorization hook refused the request: its status.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The store failed: 500.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for UploadError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            e => Self::Store(e),
        }
    }
}

impl UploadError {
    /// The status code this error answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedVersion => StatusCode::PRECONDITION_FAILED,
            Self::BadHeader(_) | Self::Metadata(_) | Self::Checksum(_) | Self::BodyFailed => {
                StatusCode::BAD_REQUEST
            }
            // 460 is tus's "Checksum Mismatch"; it is in range, so this never fails.
            Self::ChecksumMismatch => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
            Self::OffsetMismatch { .. } => StatusCode::CONFLICT,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Expired => StatusCode::GONE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Locked => StatusCode::LOCKED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Denied(d) => d.status(),
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
