//! Resumable uploads on the [tus 1.0.0](https://tus.io/protocols/resumable-upload) protocol:
//! a server and a client, verified end to end.
//!
//! - [`server::TusServer`]: a tower `Service` (mount it in axum with `nest_service`)
//!   speaking tus core plus creation, creation-with-upload, creation-defer-length,
//!   expiration, checksum (`sha1`, `sha256`, `md5`) and termination over a
//!   [`store::Store`] (default [`store::FileStore`]). A chunk counts only once all of it
//!   arrived and its checksum verified; one writer per upload; size, time and
//!   authorization limits; a completion hook with the whole file's SHA-256.
//! - [`client::Uploader`]: chunks (5 MiB by default) with `Upload-Checksum: sha256`,
//!   per-chunk retries with `palisade-core`'s `Backoff`, progress with speed and ETA,
//!   resume keyed by the file's content hash, cancellation. Works against any tus 1.0 server.
//!
//! The anchors (tusd, @tus/server, tus-js-client) lack checksums on the client side,
//! speed/ETA and content-based resume; this crate ships all three.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `rustls` | `https://` endpoints for the client through rustls (ring provider, the platform's root certificates, or [`client::Uploader::tls_config`]) |
//!
//! # Example
//!
//! A server on a loopback port and a client uploading a file to it:
//!
//! ```
//! use palisade_upload::client::Uploader;
//! use palisade_upload::server::{ServerConfig, TusServer};
//! use palisade_upload::store::FileStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let server = TusServer::new(FileStore::new(dir.path().join("uploads"))?, ServerConfig::new());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((stream, _)) = listener.accept().await {
//!         let service = hyper_util::service::TowerToHyperService::new(server.clone());
//!         tokio::spawn(
//!             hyper::server::conn::http1::Builder::new()
//!                 .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
//!         );
//!     }
//! });
//!
//! let file = dir.path().join("hello.txt");
//! std::fs::write(&file, b"hello, tus")?;
//! let uploaded = Uploader::new(&format!("http://{addr}/files"))?
//!     .upload_file(&file)
//!     .await?;
//! assert_eq!(uploaded.size, 10);
//! # Ok(())
//! # }
//! ```

pub mod checksum;
pub mod client;
pub mod id;
pub mod metadata;
pub mod protocol;
pub mod server;
pub mod store;
