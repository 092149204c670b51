//! Stored messages leave the store for a client only once it has read them, on each back
//! end: a client whose login reply never reaches it (the link from the server goes dark,
//! then the connection drops) has not had them, so they are stored again and the next
//! login gets them. Before, the login took them from the store and they were gone with
//! the connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zserver::Error;
use zserver_login::{LoginClient, LoginConfig, LoginServer};

/// A TCP proxy for one connection whose server-to-client direction can go dark (bytes
/// read and dropped) and which can then be cut.
struct Proxy {
    addr: SocketAddr,
    dark: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            dark: Arc::default(),
            sockets: Arc::default(),
        };
        let (dark, sockets) = (proxy.dark.clone(), proxy.sockets.clone());
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let server = TcpStream::connect(target).unwrap();
            let pump = |mut from: TcpStream, mut to: TcpStream, dark: Option<Arc<AtomicBool>>| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        let drop_it = dark.as_ref().is_some_and(|d| d.load(Ordering::Acquire));
                        if !drop_it && to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                })
            };
            let mut held = sockets.lock().unwrap();
            held.push(client.try_clone().unwrap());
            held.push(server.try_clone().unwrap());
            drop(held);
            pump(
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                None,
            );
            pump(server, client, Some(dark));
        });
        proxy
    }

    fn cut(&self) {
        for s in self.sockets.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

async fn scenario(backend: &'static str) -> Result<(), Error> {
    let dir = tempfile::tempdir().unwrap();
    let transport = zserver::transport(backend).unwrap();
    let config = LoginConfig::new(dir.path().join("data"));
    let server =
        LoginServer::start(transport.clone(), "127.0.0.1:0".parse().unwrap(), config).await?;
    let addr = server.local_addr();
    let ann = LoginClient::connect(transport.clone(), addr, None).await?;
    for user in ["ann", "bob"] {
        ann.register(user, "pw").await?;
    }
    ann.login("ann", "pw").await?;
    assert_eq!(ann.push(&["bob"], "kept").await?.stored, ["bob"]);

    // bob logs in through the proxy; the server's answers go dark once the connection is
    // up, so the welcome (with the message) never arrives; then the link is cut.
    let proxy = Proxy::start(addr);
    let bob = LoginClient::connect(transport.clone(), proxy.addr, None).await?;
    bob.who().await.unwrap_err(); // not logged in: the link works both ways
    proxy.dark.store(true, Ordering::Release);
    let login = bob.login("bob", "pw");
    let lost = crate::support::within(Duration::from_secs(1), login).await;
    assert!(lost.is_none(), "the welcome went dark: {lost:?}");
    proxy.cut();
    // Stored again once the server sees the connection end (bounded: a few tries, on one
    // connection: a login elsewhere would kick it, and a kicked session that has not yet
    // confirmed what it got has it stored again, for at least once).
    let bob = LoginClient::connect(transport.clone(), addr, None).await?;
    let mut offline = Vec::new();
    for _ in 0..50 {
        offline = bob.login("bob", "pw").await?;
        if !offline.is_empty() {
            break;
        }
        zserver::sleep(Duration::from_millis(100)).await;
    }
    let texts: Vec<String> = offline.into_iter().map(|m| m.text).collect();
    assert_eq!(
        texts,
        ["kept"],
        "the message the vanished client never confirmed"
    );
    // Read and confirmed this time: gone from the store for good.
    zserver::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob.login("bob", "pw").await?, Vec::new());
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    crate::support::run_on(backend, Duration::from_secs(120), scenario(backend)).unwrap();
}

#[test]
fn offline_messages_are_confirmed_on_tokio() {
    run("tokio");
}

#[test]
fn offline_messages_are_confirmed_on_async_std() {
    run("async-std");
}

#[test]
fn offline_messages_are_confirmed_on_smol() {
    run("smol");
}
