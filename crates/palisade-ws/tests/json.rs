//! JSON helpers (feature `json`) against a real in-process echo server.

#![cfg(feature = "json")]

mod support;

use palisade_ws::WsConfig;
use serde::{Deserialize, Serialize};
use support::TestServer;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Quote {
    symbol: String,
    price: u64,
}

#[tokio::test(start_paused = true)]
async fn a_message_that_fails_to_parse_arrives_as_an_error_item_with_its_raw_text() {
    let server = TestServer::start().await;
    let config = WsConfig::builder(server.url()).build().unwrap();
    let (client, messages) = palisade_ws::connect(config).unwrap();
    let mut quotes = messages.json::<Quote>();
    let quote = Quote {
        symbol: "ABC".into(),
        price: 42,
    };
    client.send_json(&quote).unwrap().await.unwrap();
    assert_eq!(quotes.recv().await.unwrap().unwrap(), quote);

    server.push("not json");
    let error = quotes.recv().await.unwrap().unwrap_err();
    assert_eq!(error.raw_text(), Some("not json"));
    assert!(error.to_string().contains("not the expected JSON"));

    // The stream goes on after a bad message.
    client.send_json(&quote).unwrap().await.unwrap();
    assert_eq!(quotes.recv().await.unwrap().unwrap(), quote);
    client.close().await.unwrap();
    assert!(quotes.recv().await.is_none());
}
