//! Typed services, remote objects and discovery, through the facade on every back end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::{bounded, suite_client, suite_server, until};
use zserver::service::{Class, Method, ObjectId, Service, Services};
use zserver::Calls;
use zserver::{Config, Error, Router};

const ADD: Method<(i64, i64), i64> = Method::new("calc", "add");
const NEG: Method<i64, i64> = Method::new("calc", "neg");
const MISSING: Method<i64, i64> = Method::new("calc", "mul");
const LONG: Method<u8, u8> = Method::new(
    "calc",
    "a_method_whose_name_is_far_longer_than_anything_a_call_should_carry_on_the_wire_each_time",
);
const SECRET: Method<(), String> = Method::new("admin", "secret");
const NEW_COUNTER: Method<u64, ObjectId> = Method::new("counter", "new");
const BUMP: Method<u64, u64> = Method::new("counter", "bump");
const NEW_NOTE: Method<String, ObjectId> = Method::new("note", "new");
const READ: Method<(), String> = Method::new("note", "read");

/// A counter object; counts its drops so that tests can see it freed.
struct Counter {
    value: AtomicU64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::AcqRel);
    }
}

fn services(drops: Arc<AtomicUsize>) -> Services {
    Services::new()
        .service(
            Service::new("calc")
                .method(ADD, |_ctx, (a, b)| async move { Ok(a + b) })
                .method(NEG, |_ctx, a: i64| async move { Ok(-a) })
                .method(LONG, |_ctx, x| async move { Ok(x) }),
        )
        .service(
            Service::new("admin")
                .method(SECRET, |_ctx, ()| async move { Ok("the keys".to_string()) }),
        )
        .class(
            Class::new(NEW_COUNTER, move |_ctx, start| {
                let drops = drops.clone();
                async move {
                    Ok(Counter {
                        value: AtomicU64::new(start),
                        drops,
                    })
                }
            })
            .method(BUMP, |_ctx, counter, by| async move {
                Ok(counter.value.fetch_add(by, Ordering::AcqRel) + by)
            }),
        )
        .class(
            Class::new(NEW_NOTE, |_ctx, text: String| async move { Ok(text) })
                .method(READ, |_ctx, note, ()| async move { Ok(note.to_string()) }),
        )
}

async fn start(services: Services) -> Result<zserver::Server, Error> {
    suite_server()
        .router(Router::new().services(services))
        .config(Config::plain_trusted_link())
        .bind("127.0.0.1:0")
        .await
}

async fn connect(server: &zserver::Server) -> Result<zserver::Client, Error> {
    suite_client()
        .config(Config::plain_trusted_link())
        .connect(server.local_addr())
        .await
}

every_backend!(typed_calls_carry_ids_not_names);
/// Typed calls work, an unknown method is a clear error, and after the first call of a
/// service no call carries a method name: 100 calls of a 90-byte method name cost far
/// less than 90 bytes each, each way.
fn typed_calls_carry_ids_not_names() {
    bounded(|| {
        zserver::block_on(async {
            let server = start(services(Arc::default())).await?;
            let client = connect(&server).await?;
            assert_eq!(client.invoke(&ADD, &(2, 3)).await?, 5);
            assert_eq!(client.invoke(&NEG, &7).await?, -7);
            assert_eq!(
                client.invoke(&MISSING, &1).await,
                Err(Error::UnknownCommand("calc.mul".into()))
            );
            let before = client.connection().stats();
            for i in 0..100u8 {
                assert_eq!(client.invoke(&LONG, &i).await?, i);
            }
            let after = client.connection().stats();
            let out = (after.bytes_out - before.bytes_out) / 100;
            let back = (after.bytes_in - before.bytes_in) / 100;
            assert!(
                out < 40 && back < 40,
                "{out} bytes out and {back} back per call: the name travels"
            );
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}

every_backend!(discovery_and_the_allow_list);
/// Discovery lists every service with its methods' ids and type names; an allow-list
/// hides the rest, which then cannot be called either.
fn discovery_and_the_allow_list() {
    bounded(|| {
        zserver::block_on(async {
            let server = start(services(Arc::default())).await?;
            let client = connect(&server).await?;
            let listed = client.services().await?;
            let names: Vec<_> = listed.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["calc", "admin", "counter", "note"]);
            let calc = &listed[0];
            assert!(!calc.class);
            let add = calc.methods.iter().find(|m| m.name == "add").unwrap();
            assert_eq!(add.argument, "(i64, i64)");
            assert_eq!(add.result, "i64");
            let counter = &listed[2];
            assert!(counter.class);
            assert!(counter
                .methods
                .iter()
                .any(|m| m.name == "new" && m.constructor));
            assert_eq!(client.invoke(&SECRET, &()).await?, "the keys");
            server.shutdown().await;

            let server = start(services(Arc::default()).expose_only(["calc", "counter"])).await?;
            let client = connect(&server).await?;
            let names: Vec<_> = client
                .services()
                .await?
                .into_iter()
                .map(|s| s.name)
                .collect();
            assert_eq!(names, ["calc", "counter"]);
            assert!(matches!(
                client.invoke(&SECRET, &()).await,
                Err(Error::UnknownCommand(_))
            ));
            assert_eq!(client.invoke(&ADD, &(1, 1)).await?, 2);
            // Nor by guessing the hidden method's id.
            for id in 0..8u32 {
                let request = postcard::to_extend(&(), postcard::to_allocvec(&(id, 0u64))?)?;
                if let Ok(reply) = client.call_bytes("$svc.call", request).await {
                    assert_ne!(
                        postcard::from_bytes::<String>(&reply).ok().as_deref(),
                        Some("the keys")
                    );
                }
            }
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}

every_backend!(remote_object_lifecycle);
/// Remote objects: created, called independently, freed; a freed, foreign or
/// wrong-class id is a clear error; a connection's objects go when it closes; the
/// per-connection limit holds.
fn remote_object_lifecycle() {
    bounded(|| {
        zserver::block_on(async {
            let drops = Arc::new(AtomicUsize::new(0));
            let server = start(services(drops.clone()).max_objects_per_connection(3)).await?;
            let client = connect(&server).await?;
            let a = client.create(&NEW_COUNTER, &10).await?;
            let b = client.create(&NEW_COUNTER, &100).await?;
            assert_ne!(a.id(), b.id());
            assert_eq!(a.call(&BUMP, &1).await?, 11);
            assert_eq!(a.call(&BUMP, &1).await?, 12);
            assert_eq!(b.call(&BUMP, &5).await?, 105);
            a.free().await?;
            assert_eq!(drops.load(Ordering::Acquire), 1, "freed at once");
            assert!(matches!(
                a.call(&BUMP, &1).await,
                Err(Error::NoSuchObject(_))
            ));
            assert!(matches!(a.free().await, Err(Error::NoSuchObject(_))));

            // The same id on another connection is not that connection's object.
            let other = connect(&server).await?;
            let bump_id = other.services().await?[2]
                .methods
                .iter()
                .find(|m| m.name == "bump")
                .unwrap()
                .id;
            let ObjectId(b_id) = b.id();
            let request = postcard::to_extend(&1u64, postcard::to_allocvec(&(bump_id, b_id))?)?;
            assert!(matches!(
                other.call_bytes("$svc.call", request).await,
                Err(Error::NoSuchObject(_))
            ));
            // A method of one class on an object of another.
            let note = client.create(&NEW_NOTE, &"hello".to_string()).await?;
            assert_eq!(note.call(&READ, &()).await?, "hello");
            let ObjectId(note_id) = note.id();
            let request = postcard::to_extend(&1u64, postcard::to_allocvec(&(bump_id, note_id))?)?;
            assert!(matches!(
                client.call_bytes("$svc.call", request).await,
                Err(Error::NoSuchObject(_))
            ));
            // The limit: b and note are live, one more fits, the next does not.
            let c = client.create(&NEW_COUNTER, &0).await?;
            assert!(client.create(&NEW_COUNTER, &0).await.is_err());
            assert_eq!(c.call(&BUMP, &2).await?, 2);

            // Closing the connection frees what it held (b and c).
            client.connection().close().await;
            until("the connection's objects are dropped", || {
                drops.load(Ordering::Acquire) == 3
            })
            .await;
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}

every_backend!(on_call_vetoes_by_method);
/// `on_call` sees every method by name and can veto it: the caller gets `Denied` and the
/// method does not run.
fn on_call_vetoes_by_method() {
    bounded(|| {
        zserver::block_on(async {
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = seen.clone();
            let drops = Arc::new(AtomicUsize::new(0));
            let services = services(drops.clone()).on_call(move |_ctx, service, method| {
                log.lock().unwrap().push(format!("{service}.{method}"));
                match (service, method) {
                    ("admin", _) => Err(Error::msg("admins only")),
                    ("counter", "new") => Err(Error::Denied("no counters today".into())),
                    _ => Ok(()),
                }
            });
            let server = start(services).await?;
            let client = connect(&server).await?;
            assert_eq!(client.invoke(&ADD, &(1, 2)).await?, 3);
            assert!(matches!(
                client.invoke(&SECRET, &()).await,
                Err(Error::Denied(_))
            ));
            assert_eq!(
                client.create(&NEW_COUNTER, &1).await.unwrap_err(),
                Error::Denied("no counters today".into())
            );
            assert_eq!(
                drops.load(Ordering::Acquire),
                0,
                "the constructor did not run"
            );
            let note = client.create(&NEW_NOTE, &"hi".to_string()).await?;
            assert_eq!(note.call(&READ, &()).await?, "hi");
            assert_eq!(
                *seen.lock().unwrap(),
                [
                    "calc.add",
                    "admin.secret",
                    "counter.new",
                    "note.new",
                    "note.read"
                ]
            );
            server.shutdown().await;
            Ok::<_, Error>(())
        })
        .unwrap()
    });
}
