//! What a server reports to its [`Listener`](palisade_core::Listener).

use palisade_core::event::{Event, Reading};

use crate::id::UploadId;

/// One thing that happened to an upload on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UploadEvent {
    /// An upload was created.
    Created {
        /// The new upload.
        id: UploadId,
        /// Its length, if known.
        length: Option<u64>,
    },
    /// A chunk arrived, verified and was committed.
    ChunkCommitted {
        /// The upload.
        id: UploadId,
        /// The chunk's size in bytes.
        bytes: u64,
        /// The offset after the chunk.
        offset: u64,
    },
    /// A chunk was refused or cut off; nothing of it counts.
    ChunkRejected {
        /// The upload.
        id: UploadId,
        /// The status the request got (460 checksum mismatch, 408 timeout, 413, ...), or
        /// 499 when the client went away mid-chunk and got no answer.
        status: u16,
    },
    /// Every byte arrived and verified.
    Completed {
        /// The upload.
        id: UploadId,
        /// Its size.
        size: u64,
    },
    /// A client terminated an upload.
    Terminated {
        /// The upload.
        id: UploadId,
    },
    /// The clean-up removed an expired upload.
    Expired {
        /// The upload.
        id: UploadId,
    },
}

impl Event for UploadEvent {
    fn component(&self) -> &'static str {
        "upload_server"
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::ChunkCommitted { .. } => "chunk_committed",
            Self::ChunkRejected { .. } => "chunk_rejected",
            Self::Completed { .. } => "completed",
            Self::Terminated { .. } => "terminated",
            Self::Expired { .. } => "expired",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            Self::ChunkCommitted { bytes, .. } => {
                record(Reading::histogram("chunk_bytes", *bytes as f64));
            }
            Self::Completed { size, .. } => {
                record(Reading::histogram("upload_bytes", *size as f64))
            }
            _ => {}
        }
    }
}
