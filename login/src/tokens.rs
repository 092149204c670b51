//! Signed tokens: a back end that knows who its users are mints a JWT, and the client logs
//! in with it (`login_token`) instead of a password. The server checks it with the key
//! [`LoginConfig::tokens`](crate::LoginConfig::tokens) names ([`TokenConfig`]).
//!
//! The claims ([`TokenClaims`]):
//!
//! | claim | | meaning |
//! | --- | --- | --- |
//! | `sub` | required | the user (the naming rule of accounts) |
//! | `exp` | required | when it expires (seconds since the Unix epoch); the connection is told (`kicked`, `token expired`) and closed then, unless the client sent a newer token with `refresh_token` |
//! | `info` | optional | any JSON value, shown beside the user in channel presence (as its JSON text) |
//! | `channels` | optional | the private channels (a namespace whose name starts with `$`, such as `$team:red`) the connection may subscribe and publish to; in a subscribe token (`channel_token`), those it adds |
//! | `iss`, `aud` | checked if configured | [`TokenConfig::issuer`], [`TokenConfig::audience`] |
//!
//! Which algorithms a token may use is fixed by the key, never by the token's header alone:
//! HS256/HS384/HS512 for a shared secret, RS256/RS384/RS512/PS256/PS384/PS512 for an RSA
//! key, ES256/ES384 for an EC key, EdDSA for an Ed25519 key (a JWKS key with an `alg`:
//! that one). `none` is refused. A token longer than [`MAX_TOKEN_BYTES`] is refused before
//! it is parsed.
//!
//! ```
//! use std::time::Duration;
//! use zserver_login::tokens::{mint_hs256, TokenClaims};
//!
//! let secret = b"a secret of at least thirty-two bytes";
//! let claims = TokenClaims::new("ann", Duration::from_secs(3600)).channel("$team:red");
//! let token = mint_hs256(secret, &claims).unwrap();
//! assert_eq!(token.split('.').count(), 3);
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use zserver::Error;

use crate::store::check_name;

/// The longest token accepted, in bytes; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The shortest shared secret accepted for HS256 (bytes): RFC 7518 asks for a key at least
/// as long as the hash.
pub const MIN_SECRET_BYTES: usize = 32;

/// The key that checks tokens' signatures.
#[derive(Clone)]
pub enum TokenKey {
    /// A shared secret (HS256/HS384/HS512): its bytes, as the back end signs with them.
    Secret(Vec<u8>),
    /// A public key in PEM (`-----BEGIN PUBLIC KEY-----`, or `BEGIN RSA PUBLIC KEY`):
    /// RSA, EC (P-256 or P-384) or Ed25519.
    PublicKeyPem(Vec<u8>),
    /// A JSON Web Key Set (`{"keys": [...]}`): a token names its key by `kid` (it may leave
    /// it out when the set has one key).
    Jwks(String),
}

impl fmt::Debug for TokenKey {
    /// Never shows a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKey::Secret(s) => write!(f, "Secret({} bytes)", s.len()),
            TokenKey::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
            TokenKey::Jwks(_) => f.write_str("Jwks(..)"),
        }
    }
}

/// How the login server checks tokens ([`LoginConfig::tokens`](crate::LoginConfig::tokens)).
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// The key.
    pub key: TokenKey,
    /// If set, a token's `iss` must be this.
    pub issuer: Option<String>,
    /// If set, a token's `aud` must be (or contain) this.
    pub audience: Option<String>,
    /// How far clocks may differ: a token counts until `exp` plus this (and its connection
    /// is closed then).
    pub leeway: Duration,
}

impl TokenConfig {
    /// Tokens checked with `key`, any issuer and audience, 5 s of leeway.
    pub fn new(key: TokenKey) -> Self {
        Self {
            key,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
        }
    }

    /// A shared secret read from the file at `path` (its bytes less trailing white space
    /// and newlines; at least [`MIN_SECRET_BYTES`]).
    pub fn secret_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let secret = read_secret(path.as_ref())?;
        Ok(Self::new(TokenKey::Secret(secret)))
    }

    /// A public key read from the PEM file at `path`.
    pub fn public_key_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let pem = read(path.as_ref())?;
        Ok(Self::new(TokenKey::PublicKeyPem(pem)))
    }

    /// A JSON Web Key Set read from the file at `path`.
    pub fn jwks_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let jwks = String::from_utf8(read(path)?)
            .map_err(|_| Error::msg(format!("{}: not UTF-8 JSON", path.display())))?;
        Ok(Self::new(TokenKey::Jwks(jwks)))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::msg(format!("reading {}: {e}", path.display())))
}

/// The secret in the file at `path`: its bytes less trailing white space, at least
/// [`MIN_SECRET_BYTES`] of them.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, Error> {
    let mut secret = read(path)?;
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Error::msg(format!(
            "{}: a token secret needs at least {MIN_SECRET_BYTES} bytes (such as \
             `openssl rand -hex 32`), it has {}",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret)
}

/// A token's claims, as the server reads them (other claims are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The user. (Required: a token without it is refused, `default` only lets the
    /// check say so.)
    #[serde(default)]
    pub sub: String,
    /// When it expires, in seconds since the Unix epoch. (Required, as `sub`.)
    #[serde(default)]
    pub exp: u64,
    /// Shown beside the user in channel presence (as its JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// The private (`$`) channels the connection may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

impl TokenClaims {
    /// `user`'s claims, expiring `ttl` from now.
    pub fn new(user: impl Into<String>, ttl: Duration) -> Self {
        Self {
            sub: user.into(),
            exp: (unix_now() + ttl).as_secs(),
            info: None,
            channels: Vec::new(),
        }
    }

    /// With `info` shown in presence.
    pub fn info(mut self, info: serde_json::Value) -> Self {
        self.info = Some(info);
        self
    }

    /// With the private channel `channel` granted.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channels.push(channel.into());
        self
    }

    /// What presence shows beside the user: the JSON text of `info`, or nothing.
    pub fn info_bytes(&self) -> Vec<u8> {
        self.info
            .as_ref()
            .map_or_else(Vec::new, |info| info.to_string().into_bytes())
    }
}

/// The time since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Signs `claims` with HS256 and `secret`: what a back end does (in any language, with any
/// JWT library); here for tests and `zserver token`.
pub fn mint_hs256(secret: &[u8], claims: &TokenClaims) -> Result<String, Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::msg(format!("signing the token: {e}")))
}

/// One key that may check a token: its id (from a JWKS) and the algorithms it takes.
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Checks tokens against the configured key (built once, at the server's start).
pub(crate) struct Verifier {
    keys: Vec<VerifyKey>,
    config: TokenConfig,
}

/// The header fields read before the signature is checked.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl Verifier {
    /// Reads the key of `config`; an error says what is wrong with it.
    pub(crate) fn new(config: &TokenConfig) -> Result<Self, Error> {
        let keys = match &config.key {
            TokenKey::Secret(secret) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(Error::msg(format!(
                        "a token secret needs at least {MIN_SECRET_BYTES} bytes"
                    )));
                }
                vec![VerifyKey::of(None, DecodingKey::from_secret(secret), None)]
            }
            TokenKey::PublicKeyPem(pem) => vec![VerifyKey::of(None, pem_key(pem)?, None)],
            TokenKey::Jwks(json) => jwks_keys(json)?,
        };
        Ok(Self {
            keys,
            config: config.clone(),
        })
    }

    /// The claims of `token` once its signature, algorithm, `exp` (required), `sub` and the
    /// configured `iss`/`aud` check out; otherwise why not, in a few words.
    pub(crate) fn verify(&self, token: &str) -> Result<TokenClaims, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "too long ({} bytes, at most {MAX_TOKEN_BYTES})",
                token.len()
            ));
        }
        let header = raw_header(token)?;
        let alg: Algorithm = header
            .alg
            .parse()
            .map_err(|_| format!("algorithm `{}` not accepted", header.alg))?;
        let named: Vec<&VerifyKey> = self
            .keys
            .iter()
            .filter(|k| k.kid.is_none() || header.kid.is_none() || k.kid == header.kid)
            .collect();
        if named.is_empty() {
            return Err(format!(
                "no key `{}`",
                header.kid.as_deref().unwrap_or_default()
            ));
        }
        let fitting: Vec<&VerifyKey> = named
            .into_iter()
            .filter(|k| k.algorithms.contains(&alg))
            .collect();
        let mut why = format!("algorithm {alg:?} not accepted by the server's key");
        for key in fitting {
            match jsonwebtoken::decode::<TokenClaims>(token, &key.key, &self.validation(key)) {
                Ok(data) => {
                    let claims = data.claims;
                    check_name(&claims.sub).map_err(|e| format!("bad `sub`: {e}"))?;
                    return Ok(claims);
                }
                Err(e) => why = reason(e.kind()),
            }
        }
        Err(why)
    }

    /// The checks for a token that `key` verifies.
    fn validation(&self, key: &VerifyKey) -> Validation {
        let mut v = Validation::new(key.algorithms[0]);
        v.algorithms = key.algorithms.clone();
        v.set_required_spec_claims(&["exp", "sub"]);
        v.leeway = self.config.leeway.as_secs();
        v.validate_nbf = true;
        if let Some(iss) = &self.config.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.config.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v
    }
}

impl VerifyKey {
    /// `key`, taking `alg` alone if given, else every algorithm of its family.
    fn of(kid: Option<String>, key: DecodingKey, alg: Option<Algorithm>) -> Self {
        let algorithms = match alg {
            Some(alg) => vec![alg],
            None => key.family().algorithms().to_vec(),
        };
        Self {
            kid,
            key,
            algorithms,
        }
    }
}

/// A PEM public key of any of the kinds taken.
fn pem_key(pem: &[u8]) -> Result<DecodingKey, Error> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|e| {
            Error::msg(format!(
                "the token public key is not an RSA, EC or Ed25519 PEM public key: {e}"
            ))
        })
}

/// The keys of a JWKS.
fn jwks_keys(json: &str) -> Result<Vec<VerifyKey>, Error> {
    let set: JwkSet =
        serde_json::from_str(json).map_err(|e| Error::msg(format!("the token JWKS: {e}")))?;
    let mut keys = Vec::new();
    let mut kids = HashSet::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        if !kids.insert(kid.clone()) || (kid.is_none() && set.keys.len() > 1) {
            return Err(Error::msg(
                "the token JWKS: with several keys, each needs a `kid` of its own",
            ));
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| Error::msg(format!("the token JWKS: key {kid:?}: {e}")))?;
        let alg = match &jwk.common.key_algorithm {
            Some(a) => Some(a.to_string().parse::<Algorithm>().map_err(|_| {
                Error::msg(format!(
                    "the token JWKS: key {kid:?}: `alg` {a} is not a signature algorithm"
                ))
            })?),
            None => None,
        };
        if alg.is_some_and(|a| !key.family().algorithms().contains(&a)) {
            return Err(Error::msg(format!(
                "the token JWKS: key {kid:?}: its `alg` does not fit its key type"
            )));
        }
        keys.push(VerifyKey::of(kid, key, alg));
    }
    if keys.is_empty() {
        return Err(Error::msg("the token JWKS has no keys"));
    }
    Ok(keys)
}

/// The header of `token`, read without checking anything else.
fn raw_header(token: &str) -> Result<RawHeader, String> {
    let malformed = || "malformed (not a signed JWT: three base64url parts)".to_owned();
    let first = token.split('.').next().ok_or_else(malformed)?;
    if token.split('.').count() != 3 {
        return Err(malformed());
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .map_err(|_| malformed())?;
    serde_json::from_slice(&json).map_err(|_| "malformed header".to_owned())
}

/// A refusal's few words.
fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet (`nbf`)".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "algorithm not accepted".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("no `{claim}` claim"),
        ErrorKind::InvalidIssuer => "wrong issuer (`iss`)".into(),
        ErrorKind::InvalidAudience => "wrong audience (`aud`)".into(),
        ErrorKind::Json(e) => format!("bad claims: {e}"),
        ErrorKind::InvalidClaimFormat(claim) => format!("bad `{claim}` claim"),
        other => format!("{other:?}"),
    }
}
