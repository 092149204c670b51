//! A tour of the command engine: a server and a client on loopback exercising console,
//! stream and typed commands, callbacks, one-way sends, delayed responses, server push,
//! broadcast, time-outs, the blocking client, statistics and graceful shutdown, all over
//! an encrypted connection whose server key the client pins.
//!
//! Run it with `cargo run --example demo` (add `--no-default-features --features smol`
//! or `--features async-std` to switch back end: the code does not change).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zserver::Calls;
use zserver::{Error, Responder, Router};

/// A typed request: serde in, serde out.
#[derive(Serialize, Deserialize, Debug)]
struct Move {
    player: String,
    x: i32,
    y: i32,
}

fn main() -> Result<(), Error> {
    let backend = zserver::backends()[0];
    println!("back end: {backend}");

    let parked: Arc<Mutex<Vec<Responder>>> = Arc::default();
    let parked_in_handler = parked.clone();
    let server_router = Router::new()
        .console("hello", |ctx, name: String| async move {
            Ok(format!(
                "hello, {name} (connection {})",
                ctx.connection_id()
            ))
        })
        .bytes("reverse", |_ctx, bytes| async move {
            Ok(bytes.iter().rev().copied().collect::<Vec<u8>>())
        })
        .call("move", |_ctx, m: Move| async move {
            Ok::<_, Error>(format!("{} moved to ({}, {})", m.player, m.x, m.y))
        })
        .console("fail", |_ctx, _text: String| async move {
            Err(Error::msg("this command always fails"))
        })
        .console("slow", |_ctx, _text: String| async move {
            zserver::sleep(Duration::from_secs(5)).await;
            Ok("too late".to_string())
        })
        // Delayed response: the handler parks its responder; "release" answers it later.
        .delayed("wait", move |_ctx, _payload, responder| {
            parked_in_handler.lock().unwrap().push(responder);
        })
        .console("release", move |_ctx, text: String| {
            let parked = parked.clone();
            async move {
                let waiting: Vec<Responder> = std::mem::take(&mut *parked.lock().unwrap());
                let n = waiting.len();
                for responder in waiting {
                    responder.reply(format!("released by `{text}`"));
                }
                Ok(format!("released {n}"))
            }
        })
        // Server push: the server calls a handler that the client registered.
        .console("call-me-back", |ctx, text: String| async move {
            let answer = ctx.connection().console("notify", &text).await?;
            Ok(format!("client answered: {answer}"))
        })
        .bytes("log", |_ctx, bytes| async move {
            println!(
                "  server got one-way message: {}",
                String::from_utf8_lossy(&bytes)
            );
            Ok(Vec::new())
        });

    zserver::block_on(async move {
        let server = zserver::server()
            .router(server_router)
            .bind("127.0.0.1:0")
            .await?;
        let addr = server.local_addr();
        println!("server listening on {addr}, key {}", server.fingerprint());

        let pushed = Arc::new(Mutex::new(Vec::<String>::new()));
        let pushed_in_handler = pushed.clone();
        let client_router = Router::new()
            .console("notify", |_ctx, text: String| async move {
                Ok(format!("client saw `{text}`"))
            })
            .bytes("news", move |_ctx, bytes| {
                let pushed = pushed_in_handler.clone();
                async move {
                    pushed
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&bytes).into_owned());
                    Ok(Vec::new())
                }
            });
        // The client pins the server's key: another server would be refused in the handshake.
        let client = zserver::client()
            .router(client_router)
            .pin_server_fingerprint(&server.fingerprint())?
            .connect(addr)
            .await?;
        println!("encrypted: {}", client.connection().is_encrypted());

        println!("console:  {}", client.console("hello", "world").await?);
        println!(
            "bytes:    {:?}",
            client.call_bytes("reverse", b"abc").await?
        );
        let m = Move {
            player: "ann".into(),
            x: 3,
            y: 4,
        };
        println!("typed:    {}", client.call::<_, String>("move", &m).await?);
        println!(
            "error:    {}",
            client.console("fail", "").await.unwrap_err()
        );
        println!(
            "unknown:  {}",
            client.console("nope", "").await.unwrap_err()
        );
        println!(
            "timeout:  {}",
            client
                .request("slow")
                .timeout(Duration::from_millis(100))
                .console("")
                .await
                .unwrap_err()
        );

        let (tx, rx) = async_channel::bounded(1);
        client
            .request("hello")
            .console_then("callback", move |reply| {
                let _ = tx.try_send(reply);
            })?;
        let reply = rx.recv().await.map_err(|_| Error::Closed)??;
        println!("callback: {reply}");

        client.send_bytes("log", b"fire and forget").await?;

        let waiter = {
            let client = client.clone();
            async move { client.call_bytes("wait", b"").await }
        };
        let releaser = async {
            zserver::sleep(Duration::from_millis(50)).await;
            client.console("release", "the demo").await
        };
        let (waited, released) = futures_lite::future::zip(waiter, releaser).await;
        println!(
            "delayed:  {} ({})",
            String::from_utf8_lossy(&waited?),
            released?
        );

        println!(
            "push:     {}",
            client.console("call-me-back", "ping").await?
        );
        let reached = server.broadcast_bytes("news", b"server news for everyone");
        client.ping().await?; // the broadcast was queued before the ping, so it has arrived
        println!(
            "broadcast reached {reached} connection(s): {:?}",
            pushed.lock().unwrap()
        );

        // The blocking client runs on its own thread, outside the async runtime.
        let blocking = std::thread::spawn(move || {
            let c = zserver::connect_blocking(addr, Duration::from_secs(5))?;
            c.console("hello", "blocking thread")
        })
        .join()
        .expect("blocking thread panicked")?;
        println!("blocking: {blocking}");

        println!("client stats: {:?}", client.connection().stats());
        let stats = server.stats();
        println!("server stats: {:?}", stats);
        server.shutdown().await;
        println!(
            "server shut down; a call now fails with: {}",
            client.console("hello", "?").await.unwrap_err()
        );
        Ok(())
    })
}
