//! Key extractors for `http::Request`s (feature `http`): the peer's address, the client's
//! address behind trusted proxies, and a header such as an API key.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ::http::header::{FORWARDED, HeaderName};
use ::http::{HeaderMap, HeaderValue, Request};

use crate::keyed::KeyExtractor;

/// The peer's address from the request's extensions: axum's
/// `ConnectInfo<SocketAddr>` (feature `axum`; serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), else a plain `SocketAddr`
/// extension (what a hand-written hyper server can insert).
fn peer<B>(request: &Request<B>) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip().to_canonical());
    }
    request
        .extensions()
        .get::<SocketAddr>()
        .map(|addr| addr.ip().to_canonical())
}

/// Keys requests by the address of the peer that sent them (feature `http`).
///
/// The address comes from the request's extensions: axum's `ConnectInfo<SocketAddr>` (with
/// the `axum` feature; serve the router with
/// `into_make_service_with_connect_info::<SocketAddr>()`) or a `SocketAddr`. The key is
/// `None` when neither is there: those requests share one limit (a `None` key in
/// [`snapshot`](crate::KeyedRateLimitLayer::snapshot)). IPv4-mapped IPv6 addresses count as
/// their IPv4 address.
///
/// Behind a reverse proxy every peer is the proxy: use [`ClientIp`] there.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use http::Request;
/// use palisade_ratelimit::{KeyExtractor, PeerIp};
///
/// let mut request = Request::new(());
/// request.extensions_mut().insert(SocketAddr::from(([192, 0, 2, 7], 50_000)));
/// assert_eq!(PeerIp.extract(&request), Some(IpAddr::from([192, 0, 2, 7])));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerIp;

impl<B> KeyExtractor<Request<B>> for PeerIp {
    type Key = Option<IpAddr>;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<IpAddr> {
        peer(request)
    }
}

/// A network of trusted proxies: an address and a prefix length (`10.0.0.0/8`,
/// `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrustedProxy {
    network: IpAddr,
    prefix: u8,
}

/// A network that could not be read as `address` or `address/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IP network (`address` or `address/prefix`): {0:?}")]
pub struct InvalidNetwork(String);

impl TrustedProxy {
    /// One address.
    pub fn address(address: IpAddr) -> Self {
        let address = address.to_canonical();
        Self {
            network: address,
            prefix: if address.is_ipv4() { 32 } else { 128 },
        }
    }

    /// Whether `address` is in the network.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for TrustedProxy {
    type Err = InvalidNetwork;

    fn from_str(text: &str) -> Result<Self, InvalidNetwork> {
        let invalid = || InvalidNetwork(text.to_owned());
        let Some((address, prefix)) = text.split_once('/') else {
            return text.parse().map(Self::address).map_err(|_| invalid());
        };
        let network = address
            .parse::<IpAddr>()
            .map_err(|_| invalid())?
            .to_canonical();
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(invalid());
        }
        Ok(Self { network, prefix })
    }
}

/// Which header a [`ClientIp`]'s proxies write the client's address to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Keys requests by the client's address behind reverse proxies you trust (feature `http`).
///
/// The peer's address (as [`PeerIp`] reads it) is the key unless the peer is a trusted
/// proxy. Then the proxies' header (`X-Forwarded-For` by default, or RFC 7239 `Forwarded`)
/// is read **from the right**: each proxy appends the address it saw, so the right-most
/// address that is not a trusted proxy is the client. Addresses left of it were written by
/// the client itself and are ignored: a client cannot pick its key by sending the header.
/// If every address in the header is trusted, the left-most is the key; if the header holds
/// something that is not an address (`unknown`, an obfuscated name), the last trusted hop
/// before it is.
///
/// Trust only the proxies in front of this server, and configure the header they write:
/// a header the proxies do not overwrite or append to is the client's to forge.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use http::Request;
/// use palisade_ratelimit::{ClientIp, KeyExtractor};
///
/// let by_client = ClientIp::new().trust("10.0.0.0/8".parse()?);
///
/// let mut request = Request::builder()
///     // "203.0.113.9" is the client's own claim; 198.51.100.4 is what our proxy saw.
///     .header("x-forwarded-for", "203.0.113.9, 198.51.100.4, 10.0.0.2")
///     .body(())?;
/// request.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 1], 443)));
/// assert_eq!(by_client.extract(&request), Some(IpAddr::from([198, 51, 100, 4])));
///
/// // An untrusted peer's header is ignored.
/// request.extensions_mut().insert(SocketAddr::from(([192, 0, 2, 1], 443)));
/// assert_eq!(by_client.extract(&request), Some(IpAddr::from([192, 0, 2, 1])));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Arc<[TrustedProxy]>,
    header: ForwardedHeader,
}

impl ClientIp {
    /// Trusts no proxy (the key is the peer's address) and reads `X-Forwarded-For` once
    /// some are trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the proxies in `network`.
    #[must_use]
    pub fn trust(mut self, network: TrustedProxy) -> Self {
        let mut trusted = self.trusted.to_vec();
        trusted.push(network);
        self.trusted = trusted.into();
        self
    }

    /// Reads `header` (default [`ForwardedHeader::XForwardedFor`]).
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted.iter().any(|network| network.contains(address))
    }

    /// The client's address given the peer and the headers.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        match self.header {
            ForwardedHeader::XForwardedFor => self.walk(
                peer,
                headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .rev()
                    .flat_map(|value| value.to_str().unwrap_or("?").rsplit(',')),
            ),
            ForwardedHeader::Forwarded => self.walk(
                peer,
                headers
                    .get_all(FORWARDED)
                    .iter()
                    .rev()
                    .flat_map(|value| value.to_str().unwrap_or("for=?").rsplit(','))
                    .map(|element| forwarded_for(element).unwrap_or("?")),
            ),
        }
    }

    /// Walks the hops right to left from a trusted peer: the first untrusted address, the
    /// last trusted one before something that is not an address, or the left-most.
    fn walk<'a>(&self, peer: IpAddr, hops: impl Iterator<Item = &'a str>) -> IpAddr {
        let mut last = peer;
        for hop in hops {
            match parse_hop(hop) {
                Some(address) if self.is_trusted(address) => last = address,
                Some(address) => return address,
                // Not an address: what lies further left cannot be trusted.
                None => return last,
            }
        }
        last
    }
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`,
/// `[2001:db8::1]:443`, quoted or not.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(address) = hop.parse::<SocketAddr>() {
        return Some(address.ip().to_canonical());
    }
    let bracketed = hop.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

/// The `for=` parameter of one `Forwarded` element (`for=...;proto=https;by=...`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then_some(value)
    })
}

impl<B> KeyExtractor<Request<B>> for ClientIp {
    type Key = Option<IpAddr>;

    fn extract(&self, request: &Request<B>) -> Option<IpAddr> {
        Some(self.client(peer(request)?, request.headers()))
    }
}

/// Keys requests by a header's value, such as an API key (feature `http`).
///
/// The key is `None` for requests without the header: they share one limit (an anonymous
/// tier). Only the first value of a repeated header counts. Values are compared byte for
/// byte; cloning one costs no allocation when it comes from hyper.
///
/// ```
/// use http::{HeaderValue, Request};
/// use palisade_ratelimit::{HeaderKey, KeyExtractor};
///
/// let by_api_key = HeaderKey::new(http::HeaderName::from_static("x-api-key"));
/// let request = Request::builder().header("x-api-key", "k-123").body(())?;
/// assert_eq!(by_api_key.extract(&request), Some(HeaderValue::from_static("k-123")));
/// assert_eq!(by_api_key.extract(&Request::new(())), None);
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys requests by the header `name`.
    pub const fn new(name: HeaderName) -> Self {
        Self { name }
    }
}

impl fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HeaderKey").field(&self.name).finish()
    }
}

impl<B> KeyExtractor<Request<B>> for HeaderKey {
    type Key = Option<HeaderValue>;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<HeaderValue> {
        request.headers().get(&self.name).cloned()
    }
}
