//! Rate limits on every back end: a call over its command's limit gets `Error` code 9
//! with how long to wait; a client that keeps going is told why and disconnected; a
//! user's bucket is shared by the user's connections; a publication over its namespace's
//! limit reaches no subscriber.

use std::time::Duration;

use crate::common::{on_thread, suite_client, suite_server, within, WAIT};
use zserver::channels::{ChannelCalls, Channels, Event, Namespace};
use zserver::rate::{RateLimit, RateLimiter, RateLimits, Rule};
use zserver::{Calls, Config, Error, Router};

fn plain() -> Config {
    Config::plain_trusted_link()
}

/// A server with an `echo` and an `other` console command, a `login` one that identifies
/// the connection, the `chat:` channels, and `limits`.
async fn start(limits: RateLimiter) -> Result<zserver::Server, Error> {
    let channels = Channels::new().namespace(Namespace::new("chat:"));
    let ids = channels.clone();
    let router = Router::new()
        .console("echo", |_ctx, text: String| async move { Ok(text) })
        .console("other", |_ctx, text: String| async move { Ok(text) })
        .console("login", move |ctx, user: String| {
            ids.identify(ctx.connection(), user.clone(), Vec::new());
            async move { Ok(user) }
        });
    suite_server()
        .router(router)
        .channels(channels)
        .rate_limits(limits)
        .config(plain())
        .bind("127.0.0.1:0")
        .await
}

async fn login(server: &zserver::Server, user: &str) -> Result<zserver::Client, Error> {
    let client = suite_client()
        .config(plain())
        .connect(server.local_addr())
        .await?;
    client.console("login", user).await?;
    Ok(client)
}

fn rate_limited(result: Result<String, Error>) -> String {
    match result {
        Err(Error::RateLimited(message)) => message,
        other => panic!("expected a rate-limit refusal, got {other:?}"),
    }
}

every_backend!(over_the_limit_then_disconnected);
/// Three `echo`s pass (the burst), the fourth is refused with a retry time, `other` has
/// no limit; the third refusal within the window says it disconnects, and does.
fn over_the_limit_then_disconnected() {
    zserver::block_on(async {
        let limits = RateLimits::default()
            .command("echo", Rule::per_connection(RateLimit::new(1, 3)))
            .strikes(3, Duration::from_secs(60));
        let limiter = RateLimiter::new(limits);
        let server = start(limiter.clone()).await?;
        let client = login(&server, "ann").await?;
        for _ in 0..3 {
            assert_eq!(client.console("echo", "hi").await?, "hi");
        }
        let refused = client.console("echo", "hi").await;
        let wait = refused.as_ref().err().and_then(Error::retry_after);
        assert!(
            wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(1)),
            "{refused:?}"
        );
        let message = rate_limited(refused);
        assert!(
            message.starts_with("rate limited, retry after "),
            "{message}"
        );
        assert!(message.ends_with(" ms"), "{message}");
        // Another command has no rule: not limited.
        assert_eq!(client.console("other", "still").await?, "still");
        rate_limited(client.console("echo", "hi").await);
        let last = rate_limited(client.console("echo", "hi").await);
        assert_eq!(
            last,
            "rate limited too often (3 refusals within 60000 ms): disconnecting"
        );
        within(WAIT, "the server closes", client.connection().closed()).await;
        assert_eq!((limiter.refused(), limiter.disconnected()), (3, 1));
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

every_backend!(a_users_connections_share_its_bucket);
/// Two connections of `ann` take from one bucket of two; `bob` has his own; a limiter
/// whose limits are replaced applies the new ones at once.
fn a_users_connections_share_its_bucket() {
    zserver::block_on(async {
        let limits = RateLimits::default()
            .every_command(Rule::per_user(RateLimit::new(1, 2)))
            .strikes(0, Duration::from_secs(1));
        let limiter = RateLimiter::new(limits);
        let server = start(limiter.clone()).await?;
        // The logins themselves are not limited: nobody is identified before them.
        let phone = login(&server, "ann").await?;
        let laptop = login(&server, "ann").await?;
        let bob = login(&server, "bob").await?;
        assert_eq!(phone.console("echo", "1").await?, "1");
        assert_eq!(laptop.console("other", "2").await?, "2");
        rate_limited(phone.console("echo", "3").await);
        rate_limited(laptop.console("echo", "3").await);
        assert_eq!(bob.console("echo", "b").await?, "b");
        assert_eq!(limiter.users_held(), 2);
        // Strikes 0: never disconnected.
        assert!(!phone.connection().is_closed());
        limiter.set(RateLimits::default());
        assert_eq!(phone.console("echo", "free").await?, "free");
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

every_backend!(a_refused_publication_reaches_no_subscriber);
/// `bob` may publish twice at once to `chat:`: his third publication is refused and is
/// not delivered; what the server publishes next is.
fn a_refused_publication_reaches_no_subscriber() {
    zserver::block_on(async {
        let limits = RateLimits::default()
            .publications("chat:", Rule::per_connection(RateLimit::new(1, 2)))
            .strikes(0, Duration::from_secs(1));
        let server = start(RateLimiter::new(limits)).await?;
        let ann = login(&server, "ann").await?;
        let bob = login(&server, "bob").await?;
        let mut sub = ann.subscribe("chat:lobby").await?;
        bob.publish("chat:lobby", "one").await?;
        bob.publish("chat:lobby", "two").await?;
        match bob.publish("chat:lobby", "three").await {
            Err(e @ Error::RateLimited(_)) => assert!(e.retry_after().is_some(), "{e}"),
            other => panic!("expected a rate-limit refusal, got {other:?}"),
        }
        server.channels().publish("chat:lobby", "marker")?;
        for expected in ["one", "two", "marker"] {
            match within(WAIT, "a publication", sub.recv()).await {
                Some(Event::Publication(p)) => assert_eq!(p.data, expected.as_bytes()),
                other => panic!("expected {expected}, got {other:?}"),
            }
        }
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

every_backend!(per_user_buckets_do_not_pile_up);
/// 300 users, one after another on one connection, each leave a bucket; once those are
/// full again (a second) the next check sweeps them: the limiter holds only the user
/// still using one.
fn per_user_buckets_do_not_pile_up() {
    zserver::block_on(async {
        let limits = RateLimits::default()
            .command("echo", Rule::per_user(RateLimit::new(1, 1)))
            .strikes(0, Duration::from_secs(1));
        let limiter = RateLimiter::new(limits);
        let server = start(limiter.clone()).await?;
        let client = login(&server, "u0").await?;
        for i in 0..300 {
            client.console("login", &format!("u{i}")).await?;
            client.console("echo", "x").await?;
        }
        assert!(limiter.users_held() >= 2, "{}", limiter.users_held());
        // Past the sweep's one-second period and every bucket's refill.
        on_thread(|| std::thread::sleep(Duration::from_millis(2100))).await;
        client.console("echo", "x").await?;
        assert_eq!(limiter.users_held(), 1);
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}
