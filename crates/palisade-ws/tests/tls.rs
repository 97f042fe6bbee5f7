//! `wss://` against a TLS echo server on loopback (feature `rustls`).
//!
//! The server is tokio-rustls in front of tokio-tungstenite, with the self-signed test-only
//! certificate in `tests/tls/` (P-256, for `localhost` and `127.0.0.1`, valid until 2126;
//! made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes
//! -days 36500 -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" ...`). The client trusts it
//! through the public [`WsConfigBuilder::tls_config`](palisade_ws::WsConfigBuilder::tls_config).

#![cfg(feature = "rustls")]

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use palisade_ws::{ConnectFailure, Message, Status, WsConfig, WsEvent};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use support::{Recorder, wait_status};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const CERT: &[u8] = include_bytes!("tls/cert.pem");
const KEY: &[u8] = include_bytes!("tls/key.pem");

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificate() -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(CERT).expect("the test certificate parses")
}

/// A client configuration that trusts the test certificate and nothing else.
fn trusting_client() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(certificate()).expect("a usable root");
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS echo server on an ephemeral loopback port; returns its port. Connections whose TLS
/// handshake fails are dropped.
async fn tls_echo_server() -> u16 {
    let key = PrivateKeyDer::from_pem_slice(KEY).expect("the test key parses");
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certificate()], key)
        .expect("a valid certificate and key");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn wss_echoes_through_a_server_trusted_with_tls_config() {
    let port = tls_echo_server().await;
    let config = WsConfig::builder(format!("wss://127.0.0.1:{port}"))
        .tls_config(trusting_client())
        .max_attempts(NonZeroU32::MIN)
        .build()
        .unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    client.send("over tls").await.unwrap();
    client.send(vec![0u8, 1, 2]).await.unwrap();
    assert_eq!(messages.recv().await, Some(Message::text("over tls")));
    assert_eq!(
        messages.recv().await,
        Some(Message::binary(vec![0u8, 1, 2]))
    );
    client.close().await.unwrap();
    assert_eq!(client.status(), Status::Disconnected);
    assert_eq!(client.stats().connects, 1);
}

#[tokio::test]
async fn wss_by_host_name_verifies_the_certificate_for_that_name() {
    let port = tls_echo_server().await;
    let config = WsConfig::builder(format!("wss://localhost:{port}"))
        .tls_config(trusting_client())
        .max_attempts(NonZeroU32::MIN)
        .build()
        .unwrap();
    let (client, mut messages) = palisade_ws::connect(config).unwrap();
    client.connected().await.unwrap();
    client.send("by name").await.unwrap();
    assert_eq!(messages.recv().await, Some(Message::text("by name")));
    client.close().await.unwrap();
}

#[tokio::test]
async fn wss_refuses_a_certificate_it_does_not_trust() {
    let port = tls_echo_server().await;
    let recorder = Recorder::default();
    // The default configuration: the platform's roots, which do not include the test
    // certificate.
    let config = WsConfig::builder(format!("wss://127.0.0.1:{port}"))
        .max_attempts(NonZeroU32::MIN)
        .listener(recorder.listener())
        .build()
        .unwrap();
    let (client, _messages) = palisade_ws::connect(config).unwrap();
    let status = wait_status(&client, Status::is_final).await;
    assert_eq!(status, Status::Failed { attempts: 1 });
    assert!(recorder.events().contains(&WsEvent::ConnectFailed {
        attempt: 1,
        failure: ConnectFailure::Io
    }));
    assert_eq!(client.stats().connects, 0);
}
