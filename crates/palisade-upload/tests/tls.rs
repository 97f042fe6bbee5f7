//! The client over `https://` against our server behind TLS on loopback (feature `rustls`).
//!
//! The server is tokio-rustls in front of the tus server, with the testkit's self-signed
//! test-only certificate (`palisade_testkit::tls`). The client trusts it through the
//! public [`Uploader::tls_config`](palisade_upload::client::Uploader::tls_config).

#![cfg(feature = "rustls")]

use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use palisade_testkit::tls;
use palisade_upload::client::{ClientError, Uploader};
use palisade_upload::server::{Completed, ServerConfig, TusServer};
use palisade_upload::store::FileStore;
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The tus server behind TLS on an ephemeral loopback port; returns the port and the
/// completed uploads. Connections whose TLS handshake fails are dropped.
async fn tls_server(dir: &std::path::Path) -> (u16, Arc<Mutex<Vec<Completed>>>) {
    let acceptor = TlsAcceptor::from(tls::server());
    let done: Arc<Mutex<Vec<Completed>>> = Arc::default();
    let server = TusServer::new(
        FileStore::new(dir.join("store")).unwrap(),
        ServerConfig::new().on_complete({
            let done = Arc::clone(&done);
            move |c| {
                done.lock().unwrap().push(c);
                async {}
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, server) = (acceptor.clone(), server.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(server))
                    .await;
            });
        }
    });
    (port, done)
}

fn write_file(path: &std::path::Path, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(path, &data).unwrap();
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_https_by_host_name_and_by_ip() {
    let dir = tempfile::tempdir().unwrap();
    let (port, done) = tls_server(dir.path()).await;
    let file = dir.path().join("data.bin");
    let data = write_file(&file, 300_000);
    let expected: [u8; 32] = sha2::Sha256::digest(&data).into();
    for host in ["localhost", "127.0.0.1"] {
        let uploaded = Uploader::new(&format!("https://{host}:{port}/files"))
            .unwrap()
            .chunk_size(64 * 1024)
            .tls_config(tls::trusting_client())
            .upload_file(&file)
            .await
            .unwrap();
        assert!(
            uploaded
                .url
                .starts_with(&format!("https://{host}:{port}/files/")),
            "{}",
            uploaded.url
        );
        assert_eq!(uploaded.sha256, expected);
    }
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 2);
    for completed in done.iter() {
        assert_eq!(completed.sha256, expected);
        assert_eq!(
            std::fs::read(completed.path.as_ref().unwrap()).unwrap(),
            data
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_it_does_not_trust_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (port, done) = tls_server(dir.path()).await;
    let file = dir.path().join("data.bin");
    write_file(&file, 1000);
    // The platform's roots do not include the self-signed test certificate.
    let result = Uploader::new(&format!("https://localhost:{port}/files"))
        .unwrap()
        .upload_file(&file)
        .await;
    assert!(
        matches!(
            &result,
            Err(ClientError::Tls(rustls::Error::InvalidCertificate(_)))
        ),
        "{result:?}"
    );
    assert!(done.lock().unwrap().is_empty());
}
