//! Resumable uploads, on each back end: an upload that breaks off leaves its bytes on the
//! server as a partial upload (counted in the quota); `put` with resume sends only the rest
//! when those bytes are the file's start, starts over when they are not, and the stored file
//! is the local one byte for byte either way. A client that claims a partial the server
//! does not have is refused and nothing is stored; a partial expires.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::AsyncRead;
use zserver::{Calls, Error, Outgoing};
use zserver_login::{LoginClient, LoginConfig, LoginServer};

const MIB: usize = 1 << 20;

/// Reads `data`, then fails: an upload whose source breaks off (the client sends `Abort`).
struct BreaksOff {
    data: Vec<u8>,
    at: usize,
}

impl AsyncRead for BreaksOff {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let rest = &self.data[self.at..];
        if rest.is_empty() {
            return Poll::Ready(Err(std::io::Error::other("the source broke off")));
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29) ^ seed)
        .collect()
}

/// Starts an upload of `name` announcing `total` bytes that breaks off after `sent`.
async fn break_off(client: &LoginClient, name: &str, bytes: &[u8], sent: usize) {
    let source = BreaksOff {
        data: bytes[..sent].to_vec(),
        at: 0,
    };
    let body = Outgoing::reader(source, Some(bytes.len() as u64));
    let result = client.client().upload("put", name, body).await;
    assert!(
        result.is_err(),
        "an upload that broke off failed: {result:?}"
    );
}

/// Waits (bounded) until the server keeps a partial of `name`, and returns its size.
async fn partial_size(client: &LoginClient, name: &str) -> u64 {
    for _ in 0..200 {
        if let Some(p) = client.partial_upload(name).await.unwrap() {
            return p.size;
        }
        zserver::sleep(Duration::from_millis(20)).await;
    }
    panic!("no partial upload of `{name}` was kept");
}

fn stored(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join("data/files/ann").join(name)).unwrap()
}

async fn scenario(backend: &'static str) -> Result<(), Error> {
    let dir = tempfile::tempdir().unwrap();
    let transport = zserver::transport(backend).unwrap();
    let mut config = LoginConfig::new(dir.path().join("data"));
    config.quota_bytes = 20 * MIB as u64;
    let local = "127.0.0.1:0".parse().unwrap();
    let server = LoginServer::start(transport.clone(), local, config.clone()).await?;
    let ann = LoginClient::connect(transport.clone(), server.local_addr(), None).await?;
    ann.register("ann", "pw").await?;
    ann.login("ann", "pw").await?;

    // An upload breaks off after 3 MiB of 8: the server keeps what it got, under its hash.
    let file = dir.path().join("big.bin");
    let bytes = data(8 * MIB, 1);
    std::fs::write(&file, &bytes).unwrap();
    break_off(&ann, "big.bin", &bytes, 3 * MIB).await;
    let kept = partial_size(&ann, "big.bin").await;
    assert!(kept > 0 && kept <= 3 * MIB as u64, "kept {kept}");
    let partial = ann.partial_upload("big.bin").await?.unwrap();
    let start = blake3::hash(&bytes[..kept as usize]);
    assert_eq!(partial.hash, *start.as_bytes());
    assert!(ann.ls().await?.is_empty(), "a partial is not a file");

    // It counts in the quota: 20 MiB less the partial leaves no room for 18 MiB more.
    let other = dir.path().join("other.bin");
    std::fs::write(&other, data(18 * MIB, 2)).unwrap();
    let refused = ann.put(&other, "other.bin", false, |_, _| {}).await;
    assert!(
        format!("{refused:?}").contains("quota exceeded"),
        "{refused:?}"
    );

    // Resumed: only the rest is sent, and the stored file is the local one.
    let put = ann.put(&file, "big.bin", true, |_, _| {}).await?;
    assert_eq!((put.resumed_from, put.restarted), (kept, false));
    let on_disk = stored(dir.path(), "big.bin").len();
    assert_eq!(
        put.written,
        bytes.len() as u64 - kept,
        "{put:?}, {on_disk} on disk"
    );
    assert!(stored(dir.path(), "big.bin") == bytes);
    assert_eq!(ann.partial_upload("big.bin").await?, None, "used up");

    // A partial that is not the local file's start: the upload starts over, and says so.
    let mut changed = bytes.clone();
    break_off(&ann, "big.bin", &bytes, 2 * MIB).await;
    partial_size(&ann, "big.bin").await;
    changed[100] ^= 1;
    std::fs::write(&file, &changed).unwrap();
    let put = ann.put(&file, "big.bin", true, |_, _| {}).await?;
    assert_eq!((put.resumed_from, put.restarted), (0, true));
    assert!(stored(dir.path(), "big.bin") == changed);
    assert_eq!(ann.partial_upload("big.bin").await?, None);

    // A client claiming a partial the server does not have is refused; nothing is stored.
    let claim = Outgoing::bytes(vec![7u8; 1000]).prefix_hash([9; 32]);
    let refused = ann.client().upload("put", "claimed.bin", claim).await;
    assert!(
        format!("{refused:?}").contains("no partial upload"),
        "{refused:?}"
    );
    assert!(ann.stat("claimed.bin").await.is_err());

    // At most 16 partials per user: the oldest go first.
    for i in 0..20 {
        let name = format!("small-{i}.bin");
        break_off(&ann, &name, &bytes[..100_000], 50_000).await;
        partial_size(&ann, &name).await;
    }
    let partials = || {
        std::fs::read_dir(dir.path().join("data/files/ann/.partial"))
            .unwrap()
            .count()
    };
    assert_eq!(partials(), 16);
    assert_eq!(
        ann.partial_upload("small-0.bin").await?,
        None,
        "the oldest went"
    );
    assert!(ann.partial_upload("small-19.bin").await?.is_some());

    // A partial older than the server keeps them is gone, and so is its quota.
    break_off(&ann, "late.bin", &bytes, MIB).await;
    partial_size(&ann, "late.bin").await;
    server.shutdown().await;
    config.keep_partial_uploads = Duration::from_millis(200);
    let server = LoginServer::start(transport.clone(), local, config).await?;
    let ann = LoginClient::connect(transport.clone(), server.local_addr(), None).await?;
    ann.login("ann", "pw").await?;
    zserver::sleep(Duration::from_millis(400)).await;
    assert_eq!(ann.partial_upload("late.bin").await?, None, "expired");
    assert_eq!(partials(), 0, "expired partials are removed from the disk");
    server.shutdown().await;
    Ok(())
}

fn run(backend: &'static str) {
    crate::support::run_on(backend, Duration::from_secs(120), scenario(backend)).unwrap();
}

#[test]
fn resume_upload_on_tokio() {
    run("tokio");
}

#[test]
fn resume_upload_on_async_std() {
    run("async-std");
}

#[test]
fn resume_upload_on_smol() {
    run("smol");
}
