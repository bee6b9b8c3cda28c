//! A deliberately small HTTP/1.1 server and client, enough for `/metrics`, `/healthz`,
//! `/readyz`, the dashboard and the RabbitMQ management API.
//!
//! The server answers `GET` and `HEAD`, one request per connection (`Connection: close`),
//! with a size limit on the request head and a deadline on every connection, so a slow or
//! hostile client cannot hold a task forever. The client speaks plain `http://` (no TLS),
//! sends Basic authentication from the URL's user info, and reads the whole response
//! (`Content-Length`, chunked, or until close). Neither is a general web stack: nothing
//! else in chunkflow needs one, and a full one would cost more to build than this file.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request head the server reads.
const MAX_HEAD: usize = 16 * 1024;
/// Deadline of one connection, request to response.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// Largest response body the client accepts.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query, percent-decoded.
    pub path: String,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
}

impl Request {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }

    pub fn json(value: &serde_json::Value) -> Self {
        Self::new(200, "application/json", value.to_string())
    }

    pub fn not_found() -> Self {
        Self::text(404, "not found\n")
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Binds `addr` (e.g. `127.0.0.1:9090`, port 0 for any free port).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `handler` on `listener` until `shutdown`.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: CancellationToken)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %error, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, answer(stream, &*handler)).await;
        });
    }
}

async fn answer<H, F>(mut stream: TcpStream, handler: &H) -> std::io::Result<()>
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return write_response(
                &mut stream,
                &Response::text(400, "request too large\n"),
                true,
            )
            .await;
        }
    }
    let Some(request) = parse_request(&head) else {
        return write_response(&mut stream, &Response::text(400, "bad request\n"), true).await;
    };
    let with_body = request.method != "HEAD";
    let response = if request.method == "GET" || request.method == "HEAD" {
        handler(request).await
    } else {
        Response::text(405, "only GET and HEAD\n")
    };
    write_response(&mut stream, &response, with_body).await
}

async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(&response.body).await?;
    }
    stream.shutdown().await
}

fn parse_request(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect();
    Some(Request {
        method,
        path: percent_decode(path),
        query,
    })
}

/// Decodes `%XX` escapes (and `+` as space in queries); invalid escapes stay as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes every byte outside `[A-Za-z0-9._~-]` as `%XX` (for one path segment).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"._~-".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Why an HTTP GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{0}` is not an http:// URL")]
    BadUrl(String),
    #[error("cannot reach {url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} sent a malformed response")]
    Malformed { url: String },
}

/// A parsed `http://[user[:password]@]host[:port][/path]` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, HttpError> {
        let bad = || HttpError::BadUrl(chunkflow::config::redact_url(url));
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let (user, hostport) = match authority.rfind('@') {
            Some(at) => {
                let info = &authority[..at];
                let (name, password) = info.split_once(':').unwrap_or((info, ""));
                (
                    Some((percent_decode(name), percent_decode(password))),
                    &authority[at + 1..],
                )
            }
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || hostport.starts_with('[') => {
                (host, port.parse().map_err(|_| bad())?)
            }
            _ => (hostport, 80),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(HttpUrl {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            path: path.to_string(),
            user,
        })
    }

    /// The URL without the password.
    pub fn redacted(&self) -> String {
        let user = match &self.user {
            Some((name, _)) => format!("{name}:***@"),
            None => String::new(),
        };
        format!("http://{user}{}:{}{}", self.host, self.port, self.path)
    }

    /// The same server and credentials, another path.
    pub fn with_path(&self, path: &str) -> HttpUrl {
        HttpUrl {
            path: path.to_string(),
            ..self.clone()
        }
    }
}

/// `GET url` within `timeout`: returns the status and the body.
pub async fn get(url: &HttpUrl, timeout: Duration) -> Result<(u16, Vec<u8>), HttpError> {
    match tokio::time::timeout(timeout, get_inner(url)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout {
            url: url.redacted(),
            timeout,
        }),
    }
}

async fn get_inner(url: &HttpUrl) -> Result<(u16, Vec<u8>), HttpError> {
    let io = |source| HttpError::Io {
        url: url.redacted(),
        source,
    };
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(io)?;
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nAccept-Encoding: identity\r\nConnection: close\r\nUser-Agent: chunkflow\r\n",
        url.path, url.host, url.port
    );
    if let Some((name, password)) = &url.user {
        request.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64(format!("{name}:{password}").as_bytes())
        ));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if response.len() > MAX_RESPONSE {
            return Err(HttpError::Malformed {
                url: url.redacted(),
            });
        }
    }
    parse_response(&response).ok_or_else(|| HttpError::Malformed {
        url: url.redacted(),
    })
}

fn parse_response(response: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..split]).ok()?;
    let body = &response[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        body.get(..length)?.to_vec()
    } else {
        body.to_vec()
    };
    Some((status, body))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Standard base64 with padding.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for group in input.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The address a listener is bound to, as text (`127.0.0.1:9090`).
pub fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|addr: SocketAddr| addr.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_base64() {
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn parses_requests_and_urls() {
        let request =
            parse_request(b"GET /api/job?id=a%2Db&x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(request.path, "/api/job");
        assert_eq!(request.param("id"), Some("a-b"));
        assert_eq!(request.param("x"), Some(""));
        assert!(parse_request(b"GET /\r\n\r\n").is_none());

        let url = HttpUrl::parse("http://guest:p%40ss@rabbit:15672/api").unwrap();
        assert_eq!(url.host, "rabbit");
        assert_eq!(url.port, 15672);
        assert_eq!(url.path, "/api");
        assert_eq!(url.user, Some(("guest".into(), "p@ss".into())));
        assert_eq!(url.redacted(), "http://guest:***@rabbit:15672/api");
        assert_eq!(HttpUrl::parse("http://h").unwrap().port, 80);
        assert!(HttpUrl::parse("https://h").is_err());
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_decode("a%zz%41"), "a%zzA");
    }

    #[test]
    fn parses_responses() {
        let (status, body) =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"abc"[..]));
        let (_, body) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(body, b"abcde");
    }
}
