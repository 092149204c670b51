//! `LoginServer::reload` on a live server: new channel namespaces, token keys and
//! failed-login limits apply to the next operation, a logged-in client stays connected
//! (and subscribed), and what needs a restart is reported, not applied.

use std::time::Duration;

use zserver::channels::{ChannelCalls, Event};
use zserver::Error;
use zserver_login::tokens::{mint_hs256, TokenClaims};
use zserver_login::{
    ChannelNamespace, LoginClient, LoginConfig, LoginError, LoginServer, TokenConfig, TokenKey,
};

use crate::support::{run_on, within};

const OLD_SECRET: &[u8] = b"the old secret, thirty-two bytes long";
const NEW_SECRET: &[u8] = b"the new secret, thirty-two bytes long";

fn token(secret: &[u8], user: &str) -> String {
    mint_hs256(secret, &TokenClaims::new(user, Duration::from_secs(3600))).unwrap()
}

#[test]
fn a_reload_applies_namespaces_token_keys_and_limits_to_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let test = async move {
        let transport = zserver::transport("tokio").unwrap();
        let mut config = LoginConfig::new(&data);
        config.tokens = Some(TokenConfig::new(TokenKey::Secret(OLD_SECRET.to_vec())));
        config.max_failed_logins = 100;
        let server = LoginServer::start(
            transport.clone(),
            "127.0.0.1:0".parse().unwrap(),
            config.clone(),
        )
        .await?;
        let pin = server.fingerprint();
        let connect = || LoginClient::connect(transport.clone(), server.local_addr(), Some(&pin));
        let ann = connect().await?;
        ann.register("ann", "ann-pw").await?;
        ann.login("ann", "ann-pw").await?;
        let mut sub = ann.client().subscribe("chat:room").await?;
        assert!(matches!(
            ann.client().subscribe("news:today").await,
            Err(Error::Denied(_))
        ));
        let bob = connect().await?;
        bob.register("bob", "bob-pw").await?;
        for _ in 0..2 {
            let wrong = bob.login("bob", "wrong").await;
            assert!(matches!(wrong, Err(LoginError::WrongPassword)), "{wrong:?}");
        }

        let mut next = config.clone();
        next.channels.push(ChannelNamespace::new("news"));
        next.tokens = Some(TokenConfig::new(TokenKey::Secret(NEW_SECRET.to_vec())));
        next.max_failed_logins = 2;
        next.store = "postgres://elsewhere/db".into();
        let report = server.reload(&next);
        for applied in ["channels", "token keys", "max-failed-logins"] {
            assert!(report.applied.iter().any(|a| a == applied), "{report:?}");
        }
        assert_eq!(report.not_applied.len(), 1, "{report:?}");
        assert_eq!(report.not_applied[0].0, "store");
        assert!(!report.complete());

        // ann is still connected, logged in and subscribed; the new namespace is open.
        assert_eq!(ann.who().await?, ["ann"]);
        ann.client().publish("chat:room", "still here").await?;
        let event = within(Duration::from_secs(10), sub.recv()).await;
        match event.expect("in time").expect("still subscribed") {
            Event::Publication(p) => assert_eq!(p.data, b"still here"),
            other => panic!("expected the publication, got {other:?}"),
        }
        ann.client().subscribe("news:today").await?;
        // Tokens: the new key is taken, the old one refused.
        let carol = connect().await?;
        carol.login_token(&token(NEW_SECRET, "carol")).await?;
        let dave = connect().await?;
        let old = dave.login_token(&token(OLD_SECRET, "dave")).await;
        assert!(matches!(old, Err(LoginError::BadToken(_))), "{old:?}");
        // The failed-login bound is 2 now: bob's two failures count against it.
        let limited = bob.login("bob", "bob-pw").await;
        assert!(
            matches!(limited, Err(LoginError::Limited { .. })),
            "{limited:?}"
        );

        // A reload with nothing new changes nothing, and says so.
        let again = server.reload(&next);
        assert!(again.applied.iter().all(|a| a == "token keys"), "{again:?}");
        server.shutdown().await;
        Ok::<_, Error>(())
    };
    run_on("tokio", Duration::from_secs(120), test).unwrap();
}
