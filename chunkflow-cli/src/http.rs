//! HTTP for the app, from the ecosystem: serving a service's endpoints and the dashboard
//! ([`serve`]: an axum router over hyper), and the client that reads the RabbitMQ
//! management API and runs `producer probe` ([`HttpClient`]: reqwest over rustls, so
//! `https://` URLs work).
//!
//! The server answers `GET` and `HEAD` only, one request per connection, with a size limit
//! on the request head and a deadline on every connection, so a slow or hostile client
//! cannot hold a task forever; on shutdown it stops accepting and lets the requests in hand
//! finish (within a deadline). Every response says `Cache-Control: no-store`.
//!
//! The client puts a deadline on every request, follows no redirect, uses no proxy, sends
//! Basic authentication from the URL's user info, and never prints a password: every URL in
//! its errors is redacted. TLS uses the aws-lc-rs provider lapin already brings, and no
//! other (with two compiled in, rustls cannot choose one and panics).

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Largest request head the server reads (hyper's smallest allowed buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// Deadline of one connection, request to response.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stopping server waits for the requests in hand.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// Largest response body the client accepts.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Binds `addr` (e.g. `127.0.0.1:9090`, port 0 for any free port).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The address a listener is bound to, as `host:port`.
pub fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|addr: SocketAddr| addr.to_string())
        .unwrap_or_default()
}

/// Serves `app` on `listener` until `shutdown`, then waits (a few seconds at most) for the
/// requests in hand. Requests other than `GET` and `HEAD` get 405.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let app = app
        .layer(middleware::from_fn(only_get_and_head))
        .layer(middleware::map_response(no_store));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(CONNECTION_DEADLINE)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %error, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(error = %error, "HTTP connection failed"),
                Err(_) => tracing::debug!("HTTP connection dropped at its deadline"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP requests still in hand at shutdown were dropped");
    }
}

async fn only_get_and_head(request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        next.run(request).await
    } else {
        text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n")
    }
}

async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A response of `content_type`.
pub fn body(status: StatusCode, content_type: &'static str, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body.into()).into_response()
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    self::body(status, "text/plain; charset=utf-8", body)
}

/// A JSON response.
pub fn json(value: &serde_json::Value) -> Response {
    body(StatusCode::OK, "application/json", value.to_string())
}

/// The 404 answer of every unknown path.
pub async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// Why an HTTP request failed. Every URL in it is redacted.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{url}` is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("cannot set up an HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("GET {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

/// An `http://` or `https://` URL with its credentials apart, so that neither the request
/// line nor an error message ever carries the password.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// The URL without user info.
    url: Url,
    /// User name and password, percent-decoded.
    user: Option<(String, String)>,
}

impl std::fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl HttpUrl {
    /// Parses `http(s)://[user[:password]@]host[:port][/path][?query]`.
    pub fn parse(text: &str) -> Result<HttpUrl, HttpError> {
        let bad = || HttpError::BadUrl {
            url: chunkflow::config::redact_url(text),
        };
        let mut url = Url::parse(text).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(bad());
        }
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = (!url.username().is_empty() || url.password().is_some()).then(|| {
            (
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            )
        });
        // Cannot fail on an http(s) URL with a host (checked above).
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(HttpUrl { url, user })
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut shown = self.url.clone();
        if let Some((name, _)) = &self.user {
            // Cannot fail: the URL has a host (checked by `parse`).
            let _ = shown.set_username(name);
            let _ = shown.set_password(Some("***"));
        }
        shown.to_string()
    }

    /// The same server and credentials; the path made of `segments` (each percent-encoded,
    /// so a `/` inside one stays inside it) and the given query.
    pub fn with_path(&self, segments: &[&str], query: Option<&str>) -> HttpUrl {
        let mut url = self.url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear().extend(segments);
        }
        url.set_query(query);
        HttpUrl {
            url,
            user: self.user.clone(),
        }
    }
}

/// A client with a deadline on every request. Cheap to clone; build one and reuse it (it
/// loads the system's root certificates).
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpClient {
    /// A client whose every request must be answered, body included, within `timeout`.
    pub fn new(timeout: Duration) -> Result<HttpClient, HttpError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent("chunkflow")
            .build()
            .map_err(|e| HttpError::Client(e.without_url()))?;
        Ok(HttpClient { client, timeout })
    }

    /// `GET url`: the status and the body.
    pub async fn get(&self, url: &HttpUrl) -> Result<(StatusCode, Vec<u8>), HttpError> {
        let failed = |source: reqwest::Error| {
            if source.is_timeout() {
                HttpError::Timeout {
                    url: url.redacted(),
                    timeout: self.timeout,
                }
            } else {
                HttpError::Request {
                    url: url.redacted(),
                    source: source.without_url(),
                }
            }
        };
        let mut request = self.client.get(url.url.clone());
        if let Some((name, password)) = &url.user {
            request = request.basic_auth(name, Some(password));
        }
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(piece) = response.chunk().await.map_err(failed)? {
            if body.len() + piece.len() > MAX_RESPONSE {
                return Err(HttpError::TooLarge {
                    url: url.redacted(),
                    limit: MAX_RESPONSE,
                });
            }
            body.extend_from_slice(&piece);
        }
        Ok((status, body))
    }
}

/// An error and its causes on one line, each once: `what: why: deeper why`.
pub fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[test]
    fn urls_keep_credentials_apart() {
        let url = HttpUrl::parse("http://guest:p%40ss@rabbit:15672/api").unwrap();
        assert_eq!(url.url.as_str(), "http://rabbit:15672/api");
        assert_eq!(url.user, Some(("guest".into(), "p@ss".into())));
        assert_eq!(url.redacted(), "http://guest:***@rabbit:15672/api");
        assert!(!format!("{url:?}").contains("p%40ss"));
        let queues = url.with_path(&["api", "queues", "/"], Some("columns=name"));
        assert_eq!(
            queues.redacted(),
            "http://guest:***@rabbit:15672/api/queues/%2F?columns=name"
        );
        assert_eq!(
            HttpUrl::parse("https://h").unwrap().redacted(),
            "https://h/"
        );
        assert_eq!(HttpUrl::parse("http://h").unwrap().user, None);
        for bad in ["ftp://h", "h:80", "http://", "not a url"] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
        let error = HttpUrl::parse("ftp://u:secret@h").unwrap_err().to_string();
        assert!(!error.contains("secret"), "{error}");
    }

    #[tokio::test]
    async fn serves_and_fetches() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = local_addr(&listener);
        let app = Router::new()
            .route("/hello", get(|| async { text(StatusCode::OK, "hi\n") }))
            .fallback(not_found);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app, shutdown.clone()));
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let base = HttpUrl::parse(&format!("http://u:p@{addr}")).unwrap();

        let (status, body) = client.get(&base.with_path(&["hello"], None)).await.unwrap();
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"hi\n"[..]));
        let (status, body) = client.get(&base.with_path(&["nope"], None)).await.unwrap();
        assert_eq!(
            (status, body.as_slice()),
            (StatusCode::NOT_FOUND, &b"not found\n"[..])
        );
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("http://{addr}/hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(response.text().await.unwrap(), "only GET and HEAD\n");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops on shutdown")
            .unwrap();
        let error = client.get(&base).await.unwrap_err();
        let chain = error_chain(&error);
        assert!(
            chain.starts_with(&format!("GET http://u:***@{addr}/ failed: ")),
            "{chain}"
        );
        assert!(!chain.contains(":p@"), "{chain}");
    }

    #[tokio::test]
    async fn https_is_spoken() {
        // A TLS handshake against a plain-HTTP server fails as a TLS error: proof that a
        // crypto provider is in place (rustls panics when it cannot choose one).
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = local_addr(&listener);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Router::new(), shutdown.clone()));
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let url = HttpUrl::parse(&format!("https://{addr}/")).unwrap();
        let error = client.get(&url).await.unwrap_err();
        assert!(matches!(error, HttpError::Request { .. }), "{error:?}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
