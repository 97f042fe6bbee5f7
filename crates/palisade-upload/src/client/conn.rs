//! A small HTTP/1.1 client: one keep-alive connection, reopened after any failure; over
//! TLS for `https://` (feature `rustls`).

use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::ClientError;

/// The largest response body read; tus responses are small.
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Conn {
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// The rustls configuration for `https://`: the uploader's, or the default one built at
    /// the first `https://` connection.
    #[cfg(feature = "rustls")]
    pub(crate) tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Conn {
    async fn sender(&mut self, uri: &Uri) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        let authority = uri
            .authority()
            .ok_or(ClientError::InvalidUrl("url has no host"))?
            .as_str();
        let usable = self
            .sender
            .as_ref()
            .is_some_and(|s| !s.is_closed() && self.authority == authority);
        if !usable {
            self.sender = None;
            let https = uri.scheme_str() == Some("https");
            #[cfg(not(feature = "rustls"))]
            if https {
                return Err(ClientError::InvalidUrl(
                    "https:// needs the `rustls` feature",
                ));
            }
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(ClientError::Connect)?;
            let _ = tcp.set_nodelay(true);
            let sender = match https {
                #[cfg(feature = "rustls")]
                true => self.handshake_tls(host, tcp).await?,
                _ => handshake(tcp).await?,
            };
            self.authority = authority.to_owned();
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or(ClientError::InvalidUrl("no connection"))
    }

    #[cfg(feature = "rustls")]
    async fn handshake_tls(
        &mut self,
        host: &str,
        tcp: tokio::net::TcpStream,
    ) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let config = match &self.tls {
            Some(config) => std::sync::Arc::clone(config),
            None => {
                let config = super::tls::default_client_config().map_err(ClientError::Tls)?;
                std::sync::Arc::clone(self.tls.insert(config))
            }
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| ClientError::InvalidUrl("host is not a valid TLS server name"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                match e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    Some(tls) => ClientError::Tls(tls.clone()),
                    None => ClientError::Connect(e),
                }
            })?;
        handshake(tls).await
    }

    /// Sends `req` to `uri` and reads the whole (small) response; drops the connection on
    /// any failure so the next request starts a fresh one.
    pub(crate) async fn send(
        &mut self,
        uri: &Uri,
        mut req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let result = tokio::time::timeout(timeout, async {
            let host = HeaderValue::from_str(
                uri.authority()
                    .ok_or(ClientError::InvalidUrl("url has no host"))?
                    .as_str(),
            )
            .map_err(|_| ClientError::InvalidUrl("bad host"))?;
            req.headers_mut().insert(HOST, host);
            *req.uri_mut() = uri.path_and_query().map_or_else(
                || Uri::from_static("/"),
                |p| p.as_str().parse().unwrap_or_default(),
            );
            let sender = self.sender(uri).await?;
            sender.ready().await.map_err(ClientError::Http)?;
            let resp = sender.send_request(req).await.map_err(ClientError::Http)?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|_| ClientError::InvalidResponse("response body failed or too large"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
        .await;
        let result = result.unwrap_or(Err(ClientError::Timeout));
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// An HTTP/1.1 connection over `io`, driven by a task of its own.
async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, ClientError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ClientError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upload connection closed");
        }
    });
    Ok(sender)
}
