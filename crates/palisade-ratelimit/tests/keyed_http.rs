//! Key extractors for HTTP (feature `http`): the peer's address from axum's `ConnectInfo`,
//! the client's address behind trusted proxies only, and an API key header.

#![cfg(feature = "http")]

use std::net::{IpAddr, SocketAddr};

use http::{HeaderName, HeaderValue, Request};
use palisade_ratelimit::{
    ClientIp, ForwardedHeader, HeaderKey, KeyExtractor, PeerIp, TrustedProxy,
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::builder();
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut request = builder.body(()).unwrap();
    request
        .extensions_mut()
        .insert(SocketAddr::new(ip(peer), 40_000));
    request
}

fn behind_proxies() -> ClientIp {
    ClientIp::new()
        .trust("10.0.0.0/8".parse().unwrap())
        .trust("2001:db8:ffff::/48".parse().unwrap())
}

#[test]
fn the_right_most_untrusted_forwarded_for_address_is_the_client() {
    let key = behind_proxies();
    let forged = request(
        "10.0.0.1",
        &[("x-forwarded-for", "1.1.1.1, 198.51.100.4, 10.0.0.3")],
    );
    assert_eq!(key.extract(&forged), Some(ip("198.51.100.4")));

    // Several header lines read as one list, the last line right-most.
    let split = request(
        "10.0.0.1",
        &[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.4:5123, 10.0.0.3"),
        ],
    );
    assert_eq!(key.extract(&split), Some(ip("198.51.100.4")));
}

#[test]
fn forwarded_headers_from_untrusted_peers_are_ignored() {
    let key = behind_proxies();
    let direct = request("192.0.2.8", &[("x-forwarded-for", "203.0.113.1")]);
    assert_eq!(key.extract(&direct), Some(ip("192.0.2.8")));
    // Trusting nobody is the peer's address.
    let nobody = ClientIp::new();
    let proxied = request("10.0.0.1", &[("x-forwarded-for", "203.0.113.1")]);
    assert_eq!(nobody.extract(&proxied), Some(ip("10.0.0.1")));
}

#[test]
fn an_all_trusted_chain_or_a_bad_hop_falls_back_to_the_last_trusted_address() {
    let key = behind_proxies();
    let internal = request("10.0.0.1", &[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
    assert_eq!(key.extract(&internal), Some(ip("10.1.1.1")));
    let garbage = request(
        "10.0.0.1",
        &[("x-forwarded-for", "203.0.113.1, unknown, 10.2.2.2")],
    );
    assert_eq!(key.extract(&garbage), Some(ip("10.2.2.2")));
    let none = request("10.0.0.1", &[]);
    assert_eq!(key.extract(&none), Some(ip("10.0.0.1")));
}

#[test]
fn rfc_7239_forwarded_is_read_when_configured() {
    let key = behind_proxies().header(ForwardedHeader::Forwarded);
    let v6 = request(
        "2001:db8:ffff::1",
        &[(
            "forwarded",
            r#"for=192.0.2.43;proto=https, For="[2001:db8:cafe::17]:4711";by=10.0.0.1"#,
        )],
    );
    assert_eq!(key.extract(&v6), Some(ip("2001:db8:cafe::17")));
    // X-Forwarded-For is then the client's to forge, and ignored.
    let xff = request("10.0.0.1", &[("x-forwarded-for", "203.0.113.1")]);
    assert_eq!(key.extract(&xff), Some(ip("10.0.0.1")));
    let hidden = request("10.0.0.1", &[("forwarded", "for=_hidden, for=10.0.0.9")]);
    assert_eq!(key.extract(&hidden), Some(ip("10.0.0.9")));
}

#[test]
fn ipv4_mapped_addresses_count_as_ipv4_and_networks_parse_strictly() {
    let key = behind_proxies();
    let mapped = request(
        "::ffff:10.0.0.1",
        &[("x-forwarded-for", "::ffff:198.51.100.4")],
    );
    assert_eq!(key.extract(&mapped), Some(ip("198.51.100.4")));
    assert!("10.0.0.0/33".parse::<TrustedProxy>().is_err());
    assert!("10.0.0/8".parse::<TrustedProxy>().is_err());
    assert!(
        "0.0.0.0/0"
            .parse::<TrustedProxy>()
            .unwrap()
            .contains(ip("1.2.3.4"))
    );
    assert!(
        !"10.0.0.0/8"
            .parse::<TrustedProxy>()
            .unwrap()
            .contains(ip("::1"))
    );
}

#[test]
fn a_missing_peer_or_header_is_the_none_key() {
    assert_eq!(PeerIp.extract(&Request::new(())), None);
    assert_eq!(behind_proxies().extract(&Request::new(())), None);
    let api_key = HeaderKey::new(HeaderName::from_static("x-api-key"));
    assert_eq!(api_key.extract(&Request::new(())), None);
    let request = request("192.0.2.1", &[("x-api-key", "k1")]);
    assert_eq!(
        api_key.extract(&request),
        Some(HeaderValue::from_static("k1"))
    );
}

#[cfg(feature = "axum")]
mod axum_router {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::StatusCode;
    use axum::routing::get;
    use palisade_ratelimit::{KeyedRateLimitLayer, Quota, TooManyRequests};
    use std::num::NonZeroU32;
    use tower::ServiceExt;

    fn from(router: &Router, peer: [u8; 4]) -> impl Future<Output = StatusCode> + use<> {
        let mut request = Request::builder().uri("/").body(Body::empty()).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((peer, 50_000))));
        let router = router.clone();
        async move { router.oneshot(request).await.unwrap().status() }
    }

    #[tokio::test(start_paused = true)]
    async fn an_axum_router_limits_each_peer_separately() {
        let per_peer =
            KeyedRateLimitLayer::new(Quota::per_minute(NonZeroU32::new(1).unwrap()), PeerIp)
                .respond_with(TooManyRequests::new());
        let router = Router::new()
            .route("/", get(|| async { "hello" }))
            .layer(per_peer.clone());
        assert_eq!(from(&router, [192, 0, 2, 1]).await, StatusCode::OK);
        assert_eq!(
            from(&router, [192, 0, 2, 1]).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(from(&router, [192, 0, 2, 2]).await, StatusCode::OK);
        assert_eq!(per_peer.keys(), 2);
        assert!(per_peer.snapshot(Some(ip("192.0.2.1"))).is_some());
    }
}
