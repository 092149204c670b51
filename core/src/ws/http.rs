//! The HTTP side of a WebSocket port: reading a request head under a size bound, checking
//! a browser's `Origin`, and writing short responses.

use std::io;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::transport::{BoxRead, BoxWrite};

/// The largest request head accepted (request line and headers); a longer one is answered
/// with 431 and the connection closed.
pub const MAX_HEAD: usize = 16 * 1024;

/// The most header lines a request may have.
const MAX_HEADERS: usize = 64;

/// What the server needs from a request head.
#[derive(Debug, Default)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) host: Option<String>,
    pub(crate) origin: Option<String>,
    /// Whether the request asks for a WebSocket (`Upgrade: websocket`).
    pub(crate) websocket: bool,
    /// `Sec-WebSocket-Version`, if given.
    pub(crate) ws_version: Option<String>,
    /// Whether `Sec-WebSocket-Key` is given.
    pub(crate) ws_key: bool,
    /// Every `Forwarded` line's value, in order.
    pub(crate) forwarded: Vec<String>,
    /// Every `X-Forwarded-For` line's value, in order.
    pub(crate) x_forwarded_for: Vec<String>,
}

/// Why a request head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The socket failed or closed before the head was complete.
    Io(io::Error),
    /// Not HTTP/1.x, or malformed.
    Malformed,
    /// Longer than [`MAX_HEAD`], or more than 64 header lines.
    TooLarge,
}

/// Reads a request head; returns it and every byte read so far (the head and whatever
/// followed it in the same packets). Memory grows only with bytes received, up to
/// [`MAX_HEAD`] plus one read.
pub(crate) async fn read_head(read: &mut BoxRead) -> Result<(Head, Vec<u8>), HeadError> {
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = read.read(&mut chunk).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&bytes) {
            Ok(httparse::Status::Complete(_)) => {
                let head = Head::from(&request);
                return Ok((head, bytes));
            }
            Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::TooLarge)
            }
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

impl From<&httparse::Request<'_, '_>> for Head {
    fn from(request: &httparse::Request<'_, '_>) -> Self {
        let all = |name: &str| -> Vec<String> {
            request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .filter_map(|h| std::str::from_utf8(h.value).ok())
                .map(|v| v.trim().to_string())
                .collect()
        };
        let header = |name: &str| all(name).into_iter().next();
        let websocket = header("upgrade").is_some_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
        });
        Self {
            method: request.method.unwrap_or_default().to_string(),
            path: request.path.unwrap_or_default().to_string(),
            host: header("host"),
            origin: header("origin"),
            websocket,
            ws_version: header("sec-websocket-version"),
            ws_key: header("sec-websocket-key").is_some_and(|k| !k.is_empty()),
            forwarded: all("forwarded"),
            x_forwarded_for: all("x-forwarded-for"),
        }
    }
}

/// Whether a WebSocket request with this head may proceed. A request without `Origin`
/// (not from a browser) always may. A browser's origin may if it is the server's own (its
/// host and port equal to the `Host` header, as for a page served from this port), or
/// one of `allowed` (scheme, host and port, compared without case), or `allowed`
/// contains `*`.
pub(crate) fn origin_allowed(head: &Head, allowed: &[String]) -> bool {
    let Some(origin) = head.origin.as_deref() else {
        return true;
    };
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    let same_origin = matches!((authority, head.host.as_deref()),
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h));
    same_origin
        || allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Writes a complete response with a short text body (a body-less one for `HEAD`) and
/// closes the connection.
pub(crate) async fn respond_text(
    write: &mut BoxWrite,
    status: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    respond_text_with(write, status, "", body, head_only).await
}

/// [`respond_text`] with `extra` header lines (each ending in `\r\n`).
pub(crate) async fn respond_text_with(
    write: &mut BoxWrite,
    status: &str,
    extra: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let mut out = response_head(status, "text/plain; charset=utf-8", body.len() as u64);
    if !extra.is_empty() {
        // Before the blank line that ends the head.
        out.truncate(out.len() - 2);
        out.extend_from_slice(extra.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    write.write_all(&out).await?;
    write.close().await
}

/// A response's status line and headers (the connection closes after each response).
pub(crate) fn response_head(status: &str, content_type: &str, length: u64) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         X-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(origin: Option<&str>, host: Option<&str>) -> Head {
        Head {
            origin: origin.map(str::to_string),
            host: host.map(str::to_string),
            websocket: true,
            ..Head::default()
        }
    }

    #[test]
    fn no_origin_header_is_accepted() {
        assert!(origin_allowed(&head(None, None), &[]));
        assert!(origin_allowed(
            &head(None, None),
            &["https://a.example".into()]
        ));
    }

    #[test]
    fn same_origin_by_default() {
        let allowed = [];
        assert!(origin_allowed(
            &head(Some("http://127.0.0.1:7180"), Some("127.0.0.1:7180")),
            &allowed
        ));
        assert!(!origin_allowed(
            &head(Some("http://evil.example"), Some("127.0.0.1:7180")),
            &allowed
        ));
        assert!(!origin_allowed(
            &head(Some("null"), Some("127.0.0.1:7180")),
            &allowed
        ));
        assert!(!origin_allowed(&head(Some("http://a"), None), &allowed));
    }

    #[test]
    fn listed_origins_besides_the_own() {
        let allowed = ["https://chat.example/".to_string()];
        assert!(origin_allowed(
            &head(Some("HTTPS://chat.example"), Some("x")),
            &allowed
        ));
        assert!(!origin_allowed(
            &head(Some("https://chat.example:444"), Some("x")),
            &allowed
        ));
        assert!(origin_allowed(
            &head(Some("http://127.0.0.1:7180"), Some("127.0.0.1:7180")),
            &allowed
        ));
        let any = ["*".to_string()];
        assert!(origin_allowed(&head(Some("null"), Some("x")), &any));
    }
}
