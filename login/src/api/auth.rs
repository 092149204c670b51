//! Who may call the API: a request carrying the API key (`Authorization: Bearer KEY` or
//! `Authorization: apikey KEY`), or the admin page's session cookie, which a login with the
//! key gave (HttpOnly, SameSite=Strict: the page's script never sees it, and no other site's
//! page sends it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use crate::lock;

/// The shortest API key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// The admin page's session cookie.
pub(crate) const COOKIE: &str = "zserver_admin";

/// How long an admin page session lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most admin page sessions at once (the oldest ends past it).
const MAX_SESSIONS: usize = 256;

/// The server API's key. Only its hash is kept, and a key given is compared by hash
/// (BLAKE3's comparison takes the same time wherever two hashes differ), so neither its
/// length nor its bytes leak through timing.
#[derive(Clone)]
pub struct ApiKey(blake3::Hash);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// `key` (at least [`MIN_KEY_LEN`] bytes).
    pub fn new(key: &str) -> Result<Self, zserver::Error> {
        if key.len() < MIN_KEY_LEN {
            return Err(zserver::Error::msg(format!(
                "the API key is {} bytes: use at least {MIN_KEY_LEN} random ones \
                 (`openssl rand -hex 32`)",
                key.len()
            )));
        }
        Ok(Self(blake3::hash(key.as_bytes())))
    }

    /// The key in the file at `path` (trailing whitespace and newlines ignored).
    pub fn from_file(path: &Path) -> Result<Self, zserver::Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            zserver::Error::msg(format!(
                "cannot read the API key file {}: {e}",
                path.display()
            ))
        })?;
        Self::new(text.trim_end())
            .map_err(|e| zserver::Error::msg(format!("{}: {e}", path.display())))
    }

    /// Whether `given` is the key.
    pub(crate) fn matches(&self, given: &str) -> bool {
        blake3::hash(given.as_bytes()) == self.0
    }
}

/// The admin page's sessions: each cookie's hash and when it expires.
#[derive(Default)]
pub(crate) struct PageSessions {
    sessions: Mutex<HashMap<blake3::Hash, Instant>>,
}

impl PageSessions {
    /// A new session; its cookie value.
    pub(crate) fn open(&self) -> String {
        use argon2::password_hash::rand_core::{OsRng, RngCore};
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, until| *until > now);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(blake3::hash(token.as_bytes()), now + SESSION_TTL);
        token
    }

    /// Whether `token` is a live session's.
    pub(crate) fn check(&self, token: &str) -> bool {
        let hash = blake3::hash(token.as_bytes());
        lock(&self.sessions)
            .get(&hash)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Ends `token`'s session.
    pub(crate) fn close(&self, token: &str) {
        lock(&self.sessions).remove(&blake3::hash(token.as_bytes()));
    }
}

/// What the API's middleware checks requests against.
pub(crate) struct Gate {
    pub(crate) key: ApiKey,
    pub(crate) sessions: PageSessions,
    /// Served over TLS: the session cookie is `Secure`.
    pub(crate) secure: bool,
}

/// The key an `Authorization` header carries (`Bearer KEY` or `apikey KEY`).
fn header_key(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey");
    known.then(|| key.trim())
}

/// The admin page's session cookie in `headers`, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// Lets a request through if it carries the key or a live page session; 401 otherwise.
pub(crate) async fn require_key(
    State(gate): State<Arc<Gate>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let allowed = match header_key(headers) {
        Some(key) => gate.key.matches(key),
        None => session_cookie(headers).is_some_and(|token| gate.sessions.check(token)),
    };
    if !allowed {
        let why = match headers.contains_key(header::AUTHORIZATION) {
            true => "wrong API key",
            false => "missing API key: send `Authorization: Bearer KEY`",
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, why));
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_whole_and_short_ones_refused() {
        assert!(ApiKey::new("short").is_err());
        let key = ApiKey::new("0123456789abcdef-secret").unwrap();
        assert!(key.matches("0123456789abcdef-secret"));
        assert!(!key.matches("0123456789abcdef-secreT"));
        assert!(!key.matches("0123456789abcdef-secret "));
        assert!(!key.matches(""));
        assert_eq!(format!("{key:?}"), "ApiKey(..)");
    }

    #[test]
    fn authorization_and_cookie_headers_are_parsed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(header_key(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "apikey  abc ".parse().unwrap());
        assert_eq!(header_key(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(header_key(&headers), None);
        headers.insert(
            header::COOKIE,
            "a=1; zserver_admin=tok; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&headers), Some("tok"));
    }

    #[test]
    fn page_sessions_open_check_and_close() {
        let sessions = PageSessions::default();
        let token = sessions.open();
        assert_eq!(token.len(), 64);
        assert!(sessions.check(&token));
        assert!(!sessions.check("not-a-session"));
        sessions.close(&token);
        assert!(!sessions.check(&token));
        for _ in 0..MAX_SESSIONS + 10 {
            sessions.open();
        }
        assert!(lock(&sessions.sessions).len() <= MAX_SESSIONS);
    }
}
