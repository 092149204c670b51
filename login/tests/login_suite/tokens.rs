//! Token logins (`login_token`, `refresh_token`): accepted, expired, a wrong key, a wrong
//! algorithm (`none` too), a missing `exp`, an oversized token; RSA, EC and Ed25519 public
//! keys and a JWKS; the connection closed when `exp` passes and not when refreshed; `info`
//! in presence and the `channels` claim for private (`$`) channels. The keys are the test
//! keys in `login/tests/keys/` (see its README).

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use zserver::channels::ChannelCalls;
use zserver::Error;
use zserver_login::tokens::{mint_hs256, TokenClaims};
use zserver_login::{
    ChannelNamespace, Event, LoginClient, LoginConfig, LoginError, LoginServer, TokenConfig,
    TokenKey,
};

use crate::support::{next_event, run_on, within};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn key_bytes(name: &str) -> Vec<u8> {
    std::fs::read(key_file(name)).unwrap()
}

/// `claims` signed with `alg` and the private key `name` (`rsa.key`, `ec.key`, `ed.key`)
/// or, for HS*, the bytes `secret`; with `kid` in the header if given.
fn sign(
    alg: Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    claims: &impl serde::Serialize,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_bytes("rsa.key")).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&key_bytes("ec.key")).unwrap()
}

fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(&key_bytes("ed.key")).unwrap()
}

fn hour(user: &str) -> TokenClaims {
    TokenClaims::new(user, Duration::from_secs(3600))
}

/// A login server on loopback taking tokens checked as `tokens` says.
async fn server(
    dir: &std::path::Path,
    name: &str,
    tokens: TokenConfig,
) -> Result<(LoginServer, LoginConfig), Error> {
    let transport = zserver::transport("tokio").unwrap();
    let mut config = LoginConfig::new(dir.join(name));
    config.tokens = Some(tokens);
    config.max_failed_logins = 100;
    config.channels.push(ChannelNamespace::new("$team"));
    let server =
        LoginServer::start(transport, "127.0.0.1:0".parse().unwrap(), config.clone()).await?;
    Ok((server, config))
}

async fn connect(server: &LoginServer) -> Result<LoginClient, Error> {
    let transport = zserver::transport("tokio").unwrap();
    LoginClient::connect(transport, server.local_addr(), Some(&server.fingerprint())).await
}

/// `token`'s refusal reason on a new connection to `server`.
async fn refused(server: &LoginServer, token: &str) -> String {
    let client = connect(server).await.unwrap();
    match client.login_token(token).await {
        Err(LoginError::BadToken(why)) => why,
        other => panic!("expected a refused token, got {other:?}"),
    }
}

fn run<F: std::future::Future<Output = Result<(), Error>> + Send + 'static>(
    test: impl FnOnce(PathBuf) -> F,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on("tokio", Duration::from_secs(120), test(path)).unwrap();
}

#[test]
fn token_accepted_expired_wrong_key_none_no_exp_oversized() {
    run(|dir| async move {
        let (server, _) = server(
            &dir,
            "hs",
            TokenConfig::new(TokenKey::Secret(SECRET.to_vec())),
        )
        .await?;
        // Accepted: ann is online, with no account made by hand.
        let ann = connect(&server).await?;
        assert!(ann
            .login_token(&mint_hs256(SECRET, &hour("ann"))?)
            .await?
            .is_empty());
        assert_eq!(ann.who().await?, ["ann"]);
        // Expired (past the leeway).
        let mut old = hour("ann");
        old.exp -= 3600 + 60;
        assert_eq!(
            refused(&server, &mint_hs256(SECRET, &old)?).await,
            "expired"
        );
        // Signed with another secret.
        let other = mint_hs256(b"another secret of thirty-two bytes!!", &hour("ann"))?;
        assert_eq!(refused(&server, &other).await, "bad signature");
        // `alg: none`, with no signature.
        let b64 = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let claims = serde_json::to_string(&hour("ann")).unwrap();
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims));
        assert!(refused(&server, &none)
            .await
            .contains("`none` not accepted"));
        // No `exp`.
        let forever = serde_json::json!({"sub": "ann"});
        let no_exp = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET),
            None,
            &forever,
        );
        assert_eq!(refused(&server, &no_exp).await, "no `exp` claim");
        // A `sub` breaking the naming rule.
        assert!(refused(&server, &mint_hs256(SECRET, &hour("no spaces"))?)
            .await
            .starts_with("bad `sub`"));
        // Oversized: refused before it is parsed.
        let huge = "x".repeat(9000);
        assert!(refused(&server, &huge).await.starts_with("too long"));
        // A refresh for another user is refused; a password session has none to refresh.
        let bob_token = mint_hs256(SECRET, &hour("bob"))?;
        assert!(
            matches!(ann.refresh_token(&bob_token).await, Err(LoginError::BadToken(w)) if w.contains("bob"))
        );
        let carol = connect(&server).await?;
        carol.register("carol", "pw").await?;
        carol.login("carol", "pw").await?;
        assert!(carol.refresh_token(&bob_token).await.is_err());
        // Messages to a token user while offline are stored for their next login.
        ann.logout().await?;
        let report = carol.push(&["ann"], "hello").await?;
        assert_eq!(report.stored, ["ann"]);
        let again = connect(&server).await?;
        let offline = again
            .login_token(&mint_hs256(SECRET, &hour("ann"))?)
            .await?;
        assert_eq!(offline.len(), 1);
        // A token user has no password to log in with.
        assert_eq!(
            connect(&server).await?.login("ann", "").await,
            Err(LoginError::WrongPassword)
        );
        let bad = server.metrics().snapshot().logins;
        assert!(bad.contains(&("bad_token", 6)), "{bad:?}");
        server.shutdown().await;
        Ok(())
    });
}

#[test]
fn token_failures_count_against_the_address() {
    run(|dir| async move {
        let transport = zserver::transport("tokio").unwrap();
        let mut config = LoginConfig::new(dir.join("limited"));
        config.tokens = Some(TokenConfig::new(TokenKey::Secret(SECRET.to_vec())));
        // A refused token names no account it could be trusted for: it counts against its
        // address alone, under the address-wide bound.
        config.max_failed_per_address = 3;
        let server = LoginServer::start(transport, "127.0.0.1:0".parse().unwrap(), config).await?;
        let client = connect(&server).await?;
        let forged = mint_hs256(b"not the server's secret, 32 bytes!", &hour("ann"))?;
        for _ in 0..3 {
            assert!(matches!(
                client.login_token(&forged).await,
                Err(LoginError::BadToken(_))
            ));
        }
        // Now even a good token waits for the window.
        let good = mint_hs256(SECRET, &hour("ann"))?;
        assert!(matches!(
            client.login_token(&good).await,
            Err(LoginError::Limited { .. })
        ));
        server.shutdown().await;
        Ok(())
    });
}

/// `token` logs in on a new connection to `server`.
async fn accepted(server: &LoginServer, token: &str) -> Result<(), Error> {
    connect(server).await?.login_token(token).await?;
    Ok(())
}

/// `token` is refused by `server` for its algorithm.
async fn not_accepted(server: &LoginServer, token: &str) {
    let why = refused(server, token).await;
    assert!(why.contains("not accepted"), "{why}");
}

#[test]
fn token_algorithms_follow_the_key() {
    run(|dir| async move {
        let claims = hour("ann");
        let start = |name: &'static str, tokens: TokenConfig| {
            let dir = dir.clone();
            async move { Ok::<_, Error>(server(&dir, name, tokens).await?.0) }
        };
        // An RSA key: RS256 in, HS256 out (also one "signed" with the public key's bytes,
        // the classic confusion), ES256 out.
        let rsa_server = start("rsa", TokenConfig::public_key_file(key_file("rsa.pub"))?).await?;
        accepted(&rsa_server, &sign(Algorithm::RS256, &rsa(), None, &claims)).await?;
        let public_as_secret = EncodingKey::from_secret(&key_bytes("rsa.pub"));
        not_accepted(
            &rsa_server,
            &sign(Algorithm::HS256, &public_as_secret, None, &claims),
        )
        .await;
        not_accepted(&rsa_server, &mint_hs256(SECRET, &claims)?).await;
        not_accepted(&rsa_server, &sign(Algorithm::ES256, &ec(), None, &claims)).await;
        // A secret: RS256 out.
        let hs_server = start("hs", TokenConfig::new(TokenKey::Secret(SECRET.to_vec()))).await?;
        not_accepted(&hs_server, &sign(Algorithm::RS256, &rsa(), None, &claims)).await;
        // EC and Ed25519 keys.
        let ec_server = start("ec", TokenConfig::public_key_file(key_file("ec.pub"))?).await?;
        accepted(&ec_server, &sign(Algorithm::ES256, &ec(), None, &claims)).await?;
        not_accepted(&ec_server, &sign(Algorithm::EdDSA, &ed(), None, &claims)).await;
        let ed_server = start("ed", TokenConfig::public_key_file(key_file("ed.pub"))?).await?;
        accepted(&ed_server, &sign(Algorithm::EdDSA, &ed(), None, &claims)).await?;
        // A JWKS: each key by its `kid`; an unknown `kid`, or the wrong key for one, out.
        let jwks = start("jwks", TokenConfig::jwks_file(key_file("jwks.json"))?).await?;
        for (alg, key, kid) in [
            (Algorithm::RS256, rsa(), "rsa-1"),
            (Algorithm::ES256, ec(), "ec-1"),
            (Algorithm::EdDSA, ed(), "ed-1"),
        ] {
            accepted(&jwks, &sign(alg, &key, Some(kid), &claims)).await?;
        }
        let unknown = refused(
            &jwks,
            &sign(Algorithm::RS256, &rsa(), Some("nope"), &claims),
        )
        .await;
        assert!(unknown.contains("no key"), "{unknown}");
        not_accepted(
            &jwks,
            &sign(Algorithm::ES256, &ec(), Some("rsa-1"), &claims),
        )
        .await;
        // The JWKS's `alg` RS256 for rsa-1: not PS256, though the key could.
        not_accepted(
            &jwks,
            &sign(Algorithm::PS256, &rsa(), Some("rsa-1"), &claims),
        )
        .await;
        // A secret too short is refused at the start.
        let short = TokenConfig::new(TokenKey::Secret(b"short".to_vec()));
        assert!(server(&dir, "short", short).await.is_err());
        Ok(())
    });
}

#[test]
fn token_expiry_closes_the_connection_unless_refreshed() {
    run(|dir| async move {
        let mut tokens = TokenConfig::new(TokenKey::Secret(SECRET.to_vec()));
        tokens.leeway = Duration::ZERO;
        let (server, _) = server(&dir, "expiry", tokens).await?;
        let soon = TokenClaims::new("ann", Duration::from_secs(2));
        let (ann, bob, carol) = (
            connect(&server).await?,
            connect(&server).await?,
            connect(&server).await?,
        );
        ann.login_token(&mint_hs256(SECRET, &soon)?).await?;
        let mut bob_soon = soon.clone();
        bob_soon.sub = "bob".into();
        bob.login_token(&mint_hs256(SECRET, &bob_soon)?).await?;
        bob.refresh_token(&mint_hs256(SECRET, &hour("bob"))?)
            .await?;
        let mut carol_soon = soon.clone();
        carol_soon.sub = "carol".into();
        carol.login_token(&mint_hs256(SECRET, &carol_soon)?).await?;
        carol.logout().await?;
        // ann: told, then closed, within the 2 s (and a margin).
        assert_eq!(
            within(Duration::from_secs(5), next_event(&ann))
                .await
                .expect("kicked in time"),
            Event::Kicked("token expired".into())
        );
        within(Duration::from_secs(5), ann.client().connection().closed())
            .await
            .expect("closed");
        // bob refreshed: still in; carol logged out: no kick, still connected.
        zserver::transport("tokio")
            .unwrap()
            .runtime()
            .sleep(Duration::from_millis(500))
            .await;
        assert_eq!(bob.who().await?, ["bob"]);
        assert_eq!(carol.try_event(), None);
        assert!(!carol.client().connection().is_closed());
        server.shutdown().await;
        Ok(())
    });
}

#[test]
fn token_claims_info_in_presence_and_private_channels() {
    run(|dir| async move {
        let (server, _) = server(
            &dir,
            "claims",
            TokenConfig::new(TokenKey::Secret(SECRET.to_vec())),
        )
        .await?;
        let ann = connect(&server).await?;
        let claims = hour("ann")
            .info(serde_json::json!({"role": "admin"}))
            .channel("$team:red");
        ann.login_token(&mint_hs256(SECRET, &claims)?).await?;
        let bob = connect(&server).await?;
        bob.register("bob", "pw").await?;
        bob.login("bob", "pw").await?;
        // Public namespaces for both; the private channel for ann alone, as granted.
        let _chat = ann.client().subscribe("chat:room").await?;
        let _also = bob.client().subscribe("chat:room").await?;
        let _red = ann.client().subscribe("$team:red").await?;
        let denied =
            |r: Result<_, Error>| matches!(r, Err(Error::Denied(m)) if m.contains("private"));
        assert!(denied(ann.client().subscribe("$team:blue").await.map(drop)));
        assert!(denied(bob.client().subscribe("$team:red").await.map(drop)));
        assert!(denied(
            bob.client().publish("$team:red", "hi").await.map(drop)
        ));
        ann.client().publish("$team:red", "hi").await?;
        // Presence shows the claim's info.
        let members = ann.client().presence("$team:red").await?;
        assert_eq!(members.len(), 1);
        assert_eq!(
            (members[0].user.as_str(), members[0].info.as_slice()),
            ("ann", br#"{"role":"admin"}"#.as_slice())
        );
        // A subscribe token lets bob (a password login) in; one for another user, or with
        // no channels, or expired, does not.
        let for_bob = |claims: TokenClaims| mint_hs256(SECRET, &claims);
        let bad = |r: Result<(), LoginError>| matches!(r, Err(LoginError::BadToken(_)));
        assert!(bad(bob
            .channel_token(&for_bob(hour("ann").channel("$team:red"))?)
            .await));
        assert!(bad(bob.channel_token(&for_bob(hour("bob"))?).await));
        let mut old = hour("bob").channel("$team:red");
        old.exp -= 3600 + 60;
        assert!(bad(bob.channel_token(&for_bob(old)?).await));
        assert!(denied(bob.client().subscribe("$team:red").await.map(drop)));
        bob.channel_token(&for_bob(hour("bob").channel("$team:red"))?)
            .await?;
        let _bob_red = bob.client().subscribe("$team:red").await?;
        assert!(denied(bob.client().subscribe("$team:blue").await.map(drop)));
        // A refresh changes the grant.
        let blue = hour("ann").channel("$team:blue");
        ann.refresh_token(&mint_hs256(SECRET, &blue)?).await?;
        let _blue = ann.client().subscribe("$team:blue").await?;
        server.shutdown().await;
        Ok(())
    });
}
