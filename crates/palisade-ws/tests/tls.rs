//! `wss://` against a TLS echo server on loopback (feature `rustls`).
//!
//! The server is tokio-rustls in front of tokio-tungstenite, with the testkit's self-signed
//! test-only certificate (`palisade_testkit::tls`). The client trusts it through the public [`WsConfigBuilder::tls_config`](palisade_ws::WsConfigBuilder::tls_config).

#![cfg(feature = "rustls")]

mod support;

use std::num::NonZeroU32;

use futures_util::{SinkExt, StreamExt};
use palisade_testkit::tls;
use palisade_ws::{ConnectFailure, Message, Status, WsConfig, WsEvent};
use support::{Recorder, wait_status};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A TLS echo server on an ephemeral loopback port; returns its port. Connections whose TLS
/// handshake fails are dropped.
async fn tls_echo_server() -> u16 {
    let acceptor = TlsAcceptor::from(tls::server());
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
        .tls_config(tls::trusting_client())
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
        .tls_config(tls::trusting_client())
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
