//! Names and values of the tus 1.0.0 protocol, shared by the server and the client.

use http::HeaderName;

/// The protocol version this crate speaks: `1.0.0`.
pub const TUS_VERSION: &str = "1.0.0";
/// The media type of a `PATCH` body: `application/offset+octet-stream`.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// The extensions the server implements, as advertised in `Tus-Extension`.
pub const EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination";
/// The checksum algorithms the server accepts, as advertised in `Tus-Checksum-Algorithm`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256,md5";

/// `Tus-Resumable`: the protocol version of a request or response.
pub static TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
/// `Tus-Version`: the versions a server supports.
pub static TUS_VERSION_HEADER: HeaderName = HeaderName::from_static("tus-version");
/// `Tus-Extension`: the extensions a server supports.
pub static TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
/// `Tus-Max-Size`: the largest upload a server accepts, in bytes.
pub static TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
/// `Tus-Checksum-Algorithm`: the checksum algorithms a server accepts.
pub static TUS_CHECKSUM_ALGORITHM: HeaderName = HeaderName::from_static("tus-checksum-algorithm");
/// `Upload-Offset`: how many bytes of an upload the server holds.
pub static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
/// `Upload-Length`: the size of the whole upload, in bytes.
pub static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
/// `Upload-Defer-Length: 1`: the size is not known yet.
pub static UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
/// `Upload-Metadata`: comma-separated `key base64(value)` pairs.
pub static UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
/// `Upload-Expires`: when an unfinished upload will be removed (an HTTP date).
pub static UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
/// `Upload-Checksum`: `algorithm base64(digest)` of a `PATCH` body.
pub static UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
