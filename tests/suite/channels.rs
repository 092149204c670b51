//! Channels through the facade on every back end: subscribe, publish, unsubscribe,
//! permissions, presence with join and leave, history, recovery after a dropped link
//! (by hand and by the reconnecting client), and a slow subscriber closed alone.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::{on_thread, skip_over_ws, suite_client, suite_server, until, within, WAIT};
use zserver::channels::{
    ChannelCalls, Channels, Event, HistoryStore, Limits, Namespace, Position, Relay, Relayed,
    StoredHistory, StoredPublication, Subscription,
};
use zserver::{Backoff, Calls, Config, Error, Router};

fn plain() -> Config {
    Config::plain_trusted_link()
}

/// `chat:` keeps 5 publications with presence and join/leave; `news:` is for the server
/// to publish; `vip:` only for user `ann`.
fn channels() -> Channels {
    Channels::new()
        .namespace(
            Namespace::new("chat:")
                .history(5, None)
                .presence(true)
                .join_leave(true),
        )
        .namespace(
            Namespace::new("news:")
                .client_publish(false)
                .max_publication(16),
        )
        .namespace(Namespace::new("vip:").subscribe_if(|_conn, who, channel| {
            if who.user == "ann" {
                Ok(())
            } else {
                Err(Error::Denied(format!("{channel} is for ann")))
            }
        }))
}

/// A server with `channels` and a `login` console command that identifies the connection.
async fn start(channels: Channels) -> Result<zserver::Server, Error> {
    let ids = channels.clone();
    let router = Router::new().console("login", move |ctx, user: String| {
        ids.identify(
            ctx.connection(),
            user.clone(),
            format!("info of {user}").into_bytes(),
        );
        async move { Ok(user) }
    });
    suite_server()
        .router(router)
        .channels(channels)
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

/// The next event, within [`WAIT`].
async fn next(sub: &mut Subscription) -> Event {
    within(WAIT, "a channel event", sub.recv())
        .await
        .expect("the subscription ended")
}

/// The next event, which must be a publication: (offset, from, data as text).
async fn next_pub(sub: &mut Subscription) -> (u64, String, String) {
    match next(sub).await {
        Event::Publication(p) => (p.offset, p.from, String::from_utf8(p.data).unwrap()),
        other => panic!("expected a publication, got {other:?}"),
    }
}

every_backend!(subscribe_publish_unsubscribe);
/// A subscriber gets what clients and the server publish, in order, with offsets and
/// authors; after unsubscribing it gets nothing more and the channel is forgotten.
fn subscribe_publish_unsubscribe() {
    zserver::block_on(async {
        let server = start(channels()).await?;
        let ann = login(&server, "ann").await?;
        let bob = login(&server, "bob").await?;
        let mut sub = ann.subscribe("chat:lobby").await?;
        assert!(sub.recovered());
        assert_eq!(sub.position().map(|p| p.offset), Some(0));
        let p1 = bob
            .publish("chat:lobby", "hi ann")
            .await?
            .expect("a position");
        assert_eq!(p1.offset, 1);
        let p2 = server
            .channels()
            .publish("chat:lobby", "from the server")?
            .unwrap();
        assert_eq!((p2.epoch, p2.offset), (p1.epoch, 2));
        assert_eq!(next_pub(&mut sub).await, (1, "bob".into(), "hi ann".into()));
        assert_eq!(
            next_pub(&mut sub).await,
            (2, String::new(), "from the server".into())
        );
        assert_eq!(sub.position(), Some(p2));
        // A channel without history: offset 0, no position.
        let mut news = ann.subscribe("news:today").await?;
        assert_eq!(news.position(), None);
        assert_eq!(server.channels().publish("news:today", "headline")?, None);
        assert_eq!(
            next_pub(&mut news).await,
            (0, String::new(), "headline".into())
        );
        assert_eq!(server.channels().subscribers("news:today").len(), 1);
        news.unsubscribe().await?;
        assert!(server.channels().subscribers("news:today").is_empty());
        server.channels().publish("news:today", "unheard")?;
        // The lobby still works, and saw nothing of the news.
        bob.publish("chat:lobby", "again").await?;
        assert_eq!(next_pub(&mut sub).await, (3, "bob".into(), "again".into()));
        // A dropped subscription unsubscribes in the background.
        drop(sub);
        until("the dropped subscription is gone", || {
            server.channels().subscribers("chat:lobby").is_empty()
        })
        .await;
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

every_backend!(permissions_and_limits_are_clear_errors);
/// What a namespace refuses is refused with the error that says why, and nothing of it
/// reaches subscribers.
fn permissions_and_limits_are_clear_errors() {
    zserver::block_on(async {
        let mut limits = Limits::default();
        limits.channels_per_connection = 2;
        let server = start(channels().limits(limits)).await?;
        let ann = login(&server, "ann").await?;
        let bob = login(&server, "bob").await?;
        // No namespace for it.
        assert!(matches!(ann.subscribe("other:x").await, Err(Error::Denied(_))));
        assert!(matches!(ann.publish("other:x", "x").await, Err(Error::Denied(_))));
        // Only ann may subscribe to vip:.
        assert!(matches!(bob.subscribe("vip:room").await, Err(Error::Denied(m)) if m.contains("for ann")));
        let _vip = ann.subscribe("vip:room").await?;
        // Clients may not publish news; the server may, within 16 bytes.
        assert!(matches!(ann.publish("news:a", "x").await, Err(Error::Denied(_))));
        assert!(matches!(
            server.channels().publish("news:a", [0u8; 17]),
            Err(Error::Limit(_))
        ));
        // A bad name, a second subscription to one channel, and the per-connection limit.
        assert!(matches!(ann.subscribe("").await, Err(Error::BadRequest(_))));
        let long = format!("chat:{}", "x".repeat(300));
        assert!(matches!(ann.subscribe(&long).await, Err(Error::BadRequest(_))));
        let _one = ann.subscribe("chat:one").await?;
        assert!(matches!(ann.subscribe("chat:one").await, Err(Error::BadRequest(_))));
        assert!(matches!(ann.subscribe("chat:two").await, Err(Error::Limit(_))));
        // Presence and history where the namespace has none.
        assert!(matches!(ann.presence("news:a").await, Err(Error::Denied(_))));
        assert!(matches!(ann.history("news:a", None, 10).await, Err(Error::Denied(_))));
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

every_backend!(presence_and_join_leave);
/// Presence lists each subscriber with the identity the app gave it; the others are told
/// when someone joins and when they leave, by unsubscribing or by closing.
fn presence_and_join_leave() {
    zserver::block_on(async {
        let server = start(channels()).await?;
        let ann = login(&server, "ann").await?;
        let bob = login(&server, "bob").await?;
        let mut a = ann.subscribe("chat:room").await?;
        let b = bob.subscribe("chat:room").await?;
        let joined = match next(&mut a).await {
            Event::Join(m) => m,
            other => panic!("expected a join, got {other:?}"),
        };
        assert_eq!(joined.user, "bob");
        assert_eq!(joined.info, b"info of bob");
        let mut members = ann.presence("chat:room").await?;
        members.sort_by(|x, y| x.user.cmp(&y.user));
        let users: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
        assert_eq!(users, ["ann", "bob"]);
        assert_eq!(members[1], joined);
        assert_eq!(server.channels().presence("chat:room")?.len(), 2);
        b.unsubscribe().await?;
        assert!(matches!(next(&mut a).await, Event::Leave(m) if m.user == "bob"));
        // Closing the connection leaves too.
        let _again = bob.subscribe("chat:room").await?;
        assert!(matches!(next(&mut a).await, Event::Join(m) if m.user == "bob"));
        bob.connection().close().await;
        drop(_again);
        assert!(matches!(next(&mut a).await, Event::Leave(m) if m.user == "bob"));
        assert_eq!(ann.presence("chat:room").await?.len(), 1);
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

every_backend!(history_and_recovery_from_a_position);
/// History pages through what a channel keeps; a client that subscribes again from its
/// last position gets exactly what it missed, in order, and `recovered: false` when the
/// gap is older than the history (5 publications) or the epoch is another.
fn history_and_recovery_from_a_position() {
    zserver::block_on(async {
        let server = start(channels()).await?;
        let ch = server.channels();
        let ann = login(&server, "ann").await?;
        let mut sub = ann.subscribe("chat:r").await?;
        ch.publish("chat:r", "1")?;
        ch.publish("chat:r", "2")?;
        assert_eq!(next_pub(&mut sub).await.0, 1);
        assert_eq!(next_pub(&mut sub).await.0, 2);
        let kept: Position = sub.position().unwrap();
        // The link drops; three publications happen meanwhile.
        ann.connection().close().await;
        drop(sub);
        for text in ["3", "4", "5"] {
            ch.publish("chat:r", text)?;
        }
        let ann = login(&server, "ann").await?;
        let mut back = ann.subscribe_from("chat:r", Some(kept)).await?;
        assert!(back.recovered());
        for want in ["3", "4", "5"] {
            let (offset, _, text) = next_pub(&mut back).await;
            assert_eq!(text, want);
            assert_eq!(offset, want.parse::<u64>().unwrap());
        }
        ch.publish("chat:r", "6")?;
        assert_eq!(next_pub(&mut back).await.2, "6");
        // History: pages, and what the server reads.
        let page = ann.history("chat:r", None, 3).await?;
        assert_eq!(page.position.offset, 6);
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [2, 3, 4], "5 kept: 2..=6, the first 3 of them");
        let after = ann
            .history(
                "chat:r",
                Some(Position {
                    offset: 4,
                    ..page.position
                }),
                10,
            )
            .await?;
        assert_eq!(after.publications.len(), 2);
        assert_eq!(ch.history("chat:r", None, 100)?.publications.len(), 5);
        // Too old a gap (offset 0: publication 1 is gone), or another epoch.
        drop(back);
        let old = Position {
            offset: 0,
            ..page.position
        };
        let other = Position {
            epoch: page.position.epoch ^ 1,
            offset: 3,
        };
        for since in [old, other] {
            let c = login(&server, "ann").await?;
            let s = c.subscribe_from("chat:r", Some(since)).await?;
            assert!(!s.recovered(), "from {since}");
            assert_eq!(s.position(), Some(page.position));
        }
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

every_backend!(a_reconnecting_client_recovers_by_itself);
/// A reconnecting client's subscription survives a dropped link: it is made again from
/// its last position, says so, and delivers what was published meanwhile exactly once.
fn a_reconnecting_client_recovers_by_itself() {
    zserver::block_on(async {
        let server = start(channels()).await?;
        let fast = Backoff::new(Duration::from_millis(20), Duration::from_millis(100));
        let client = suite_client()
            .config(plain())
            .reconnecting(server.local_addr())?
            .backoff(fast)
            .on_connect(|c: zserver::Client| async move {
                c.console("login", "ann").await?;
                Ok(())
            })
            .connect()
            .await?;
        let mut sub = client.subscribe("chat:live").await?;
        server.channels().publish("chat:live", "before")?;
        assert_eq!(next_pub(&mut sub).await.2, "before");
        // The server drops the link, then publishes while the client is away.
        let first = client.current()?.connection().id();
        for conn in server.connections() {
            conn.close().await;
        }
        for text in ["away 1", "away 2"] {
            server.channels().publish("chat:live", text)?;
        }
        match next(&mut sub).await {
            Event::Resubscribed {
                recovered,
                position,
            } => {
                assert!(recovered);
                assert_eq!(position.map(|p| p.offset), Some(3));
            }
            other => panic!("expected a resubscription, got {other:?}"),
        }
        assert_eq!(
            next_pub(&mut sub).await,
            (2, String::new(), "away 1".into())
        );
        assert_eq!(
            next_pub(&mut sub).await,
            (3, String::new(), "away 2".into())
        );
        // The resubscription runs before the new link is offered to callers.
        assert_ne!(client.connected().await?.connection().id(), first);
        server.channels().publish("chat:live", "after")?;
        assert_eq!(next_pub(&mut sub).await.2, "after");
        // Nothing was delivered twice: the queue is empty now.
        zserver::sleep(Duration::from_millis(100)).await;
        let extra = futures_lite::future::poll_once(sub.recv()).await;
        assert!(extra.is_none(), "an extra event: {extra:?}");
        client.close().await;
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

every_backend!(a_slow_subscriber_is_closed_alone);
/// A subscriber that never reads is closed once its queue is over the limit; a reading
/// subscriber of the same channel gets every publication, and the server's memory for the
/// slow one is released.
fn a_slow_subscriber_is_closed_alone() {
    if skip_over_ws("a_slow_subscriber_is_closed_alone") {
        return;
    }
    zserver::block_on(async {
        let mut limits = Limits::default();
        limits.subscriber_queue = 256 * 1024;
        let channels = Channels::new()
            .namespace(Namespace::new("feed:"))
            .limits(limits);
        let server = start(channels).await?;
        let good = login(&server, "good").await?;
        let mut sub = good.subscribe("feed:a").await?;
        // A raw peer: plain preamble, one `$ch.sub` call, then it never reads again.
        let addr = server.local_addr();
        let raw = on_thread(move || {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            sock.connect(&addr.into()).unwrap();
            let mut s: std::net::TcpStream = sock.into();
            s.write_all(b"ZSRV\x01\x00\x00\x00").unwrap();
            let mut theirs = [0u8; 8];
            s.read_exact(&mut theirs).unwrap();
            // Call id 1, "$ch.sub", SubscribeRequest { channel: "feed:a", since: None }.
            let payload = [&[6u8][..], b"feed:a", &[0]].concat();
            let mut frame = ((4 + 7 + payload.len()) as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&[0, 0, 1, 7]);
            frame.extend_from_slice(b"$ch.sub");
            frame.extend_from_slice(&payload);
            s.write_all(&frame).unwrap();
            s
        })
        .await;
        until("both subscribed", || {
            server.channels().subscribers("feed:a").len() == 2
        })
        .await;
        let data = vec![7u8; 4096];
        let total = 4000;
        let reader = async {
            for i in 0..total {
                match next(&mut sub).await {
                    Event::Publication(p) => assert_eq!(p.data.len(), 4096, "publication {i}"),
                    other => panic!("expected a publication, got {other:?}"),
                }
            }
        };
        let writer = async {
            for batch in 0..total / 20 {
                for _ in 0..20 {
                    server.channels().publish("feed:a", &data).unwrap();
                }
                let _ = batch;
                zserver::sleep(Duration::from_millis(2)).await;
            }
        };
        futures_lite::future::zip(reader, writer).await;
        assert_eq!(server.channels().counts().slow_closed, 1);
        assert_eq!(server.channels().subscribers("feed:a").len(), 1);
        until("the slow connection is gone", || {
            server.connection_count() == 1
        })
        .await;
        drop(raw);
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

/// A [`HistoryStore`] in memory that two servers share: what a PostgreSQL store is to a
/// cluster, with the same rule (an append must follow the last stored offset).
#[derive(Default)]
struct SharedStore(std::sync::Mutex<std::collections::HashMap<String, StoredHistory>>);

impl HistoryStore for SharedStore {
    fn load(&self, channel: &str, keep: usize) -> Result<Option<StoredHistory>, Error> {
        let map = self.0.lock().unwrap();
        Ok(map.get(channel).map(|h| {
            let mut h = h.clone();
            let from = h.publications.len().saturating_sub(keep);
            h.publications.drain(..from);
            h
        }))
    }

    fn create(&self, channel: &str, epoch: u64) -> Result<(), Error> {
        let mut map = self.0.lock().unwrap();
        map.entry(channel.to_owned()).or_insert(StoredHistory {
            epoch,
            top: 0,
            publications: Vec::new(),
        });
        Ok(())
    }

    fn append(
        &self,
        channel: &str,
        p: &StoredPublication,
        keep: usize,
    ) -> Result<Option<u64>, Error> {
        let mut map = self.0.lock().unwrap();
        let Some(h) = map.get_mut(channel) else {
            return Ok(None);
        };
        h.top += 1;
        h.publications.push(StoredPublication {
            offset: h.top,
            ..p.clone()
        });
        let from = h.publications.len().saturating_sub(keep);
        h.publications.drain(..from);
        Ok(Some(h.top))
    }
}

/// Relays to the other server's channels, in order, on a thread of its own.
struct ToOther(std::sync::mpsc::Sender<Relayed>);

impl Relay for ToOther {
    fn relay(&self, publication: Relayed) {
        let _ = self.0.send(publication);
    }
}

every_backend!(two_servers_sharing_a_store_keep_one_order);
/// Two servers with one store and a relay between them (a cluster in small): both publish
/// at once, and the subscribers on each see offsets 1..=N, each once, in the same order;
/// one recovers on the other server, and after a restart, from the store.
fn two_servers_sharing_a_store_keep_one_order() {
    zserver::block_on(async {
        let store = std::sync::Arc::new(SharedStore::default());
        let (to_b, from_a) = std::sync::mpsc::channel::<Relayed>();
        let (to_a, from_b) = std::sync::mpsc::channel::<Relayed>();
        let durable = || {
            Channels::new()
                .store(store.clone())
                .namespace(Namespace::new("chat:").history(100, None).durable(true))
        };
        let (ch_a, ch_b) = (
            durable().relay(std::sync::Arc::new(ToOther(to_b))),
            durable().relay(std::sync::Arc::new(ToOther(to_a))),
        );
        for (rx, channels) in [(from_a, ch_b.clone()), (from_b, ch_a.clone())] {
            std::thread::spawn(move || {
                while let Ok(r) = rx.recv() {
                    channels.apply_remote(&r).unwrap();
                }
            });
        }
        let a = start(ch_a.clone()).await?;
        let b = start(ch_b.clone()).await?;
        let ann = login(&a, "ann").await?;
        let bob = login(&b, "bob").await?;
        let mut on_a = ann.subscribe("chat:x").await?;
        let mut on_b = bob.subscribe("chat:x").await?;
        let n = 30;
        let (x, y) = futures_lite::future::zip(
            async {
                for i in 0..n {
                    ann.publish("chat:x", format!("a{i}")).await?;
                }
                Ok::<_, Error>(())
            },
            async {
                for i in 0..n {
                    bob.publish("chat:x", format!("b{i}")).await?;
                }
                Ok::<_, Error>(())
            },
        )
        .await;
        x?;
        y?;
        let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
        for _ in 0..2 * n {
            seen_a.push(next_pub(&mut on_a).await);
            seen_b.push(next_pub(&mut on_b).await);
        }
        let offsets: Vec<u64> = seen_a.iter().map(|p| p.0).collect();
        assert_eq!(offsets, (1..=2 * n as u64).collect::<Vec<_>>());
        assert_eq!(seen_a, seen_b, "one order on both servers");
        // Recovery on the other server.
        let kept = on_a.position().unwrap();
        drop(on_a);
        bob.publish("chat:x", "later").await?;
        let ann_on_b = login(&b, "ann").await?;
        let mut back = ann_on_b.subscribe_from("chat:x", Some(kept)).await?;
        assert!(back.recovered());
        assert_eq!(next_pub(&mut back).await.2, "later");
        a.shutdown().await;
        b.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}

every_backend!(storms_and_history_stay_bounded);
/// A storm of subscriptions and unsubscriptions to ever new channels leaves nothing
/// behind; history is bounded in total, however many channels are published to, and the
/// channels that lost their oldest publications to the bound say so on recovery.
fn storms_and_history_stay_bounded() {
    zserver::block_on(async {
        let mut limits = Limits::default();
        limits.history_bytes = 64 * 1024;
        let channels = Channels::new()
            .namespace(Namespace::new("chat:").history(1000, None))
            .namespace(Namespace::new("live:"))
            .limits(limits);
        let server = start(channels).await?;
        let ch = server.channels();
        let ann = login(&server, "ann").await?;
        for i in 0..2000 {
            let name = format!("live:{i}");
            let sub = ann.subscribe(&name).await?;
            sub.unsubscribe().await?;
        }
        assert_eq!(ch.channel_count(), 0, "nothing left of the storm");
        // 200 channels × 20 publications of 1 KiB: 4 MiB published, 64 KiB kept.
        let first = ann.subscribe("chat:0").await?;
        let kept = first.position().unwrap();
        let data = vec![1u8; 1024];
        for round in 0..20 {
            for c in 0..200 {
                ch.publish(&format!("chat:{c}"), &data)?;
            }
            let held = ch.history_bytes();
            assert!(
                held <= 64 * 1024 + 2048,
                "round {round}: {held} bytes of history held"
            );
        }
        drop(first);
        let again = ann.subscribe_from("chat:0", Some(kept)).await?;
        assert!(
            !again.recovered(),
            "its oldest publications were dropped to the bound"
        );
        server.shutdown().await;
        Ok::<_, Error>(())
    })
    .unwrap()
}
