//! Replays the committed fuzz corpus (`fuzz/corpus/TARGET/*`) through the fuzz targets on
//! stable Rust, so that every input that ever found a bug, and the seeds, stay covered.

use std::path::Path;

use zserver_core::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no corpus for {target}");
}

#[test]
fn frame_decoder_corpus() {
    replay("frame_decoder", fuzzing::frame_decoder);
}

#[test]
fn header_corpus() {
    replay("header", fuzzing::header);
}

#[test]
fn negotiate_server_corpus() {
    replay("negotiate_server", fuzzing::negotiate_server);
}

#[test]
fn negotiate_client_corpus() {
    replay("negotiate_client", fuzzing::negotiate_client);
}

#[test]
fn dispatcher_corpus() {
    replay("dispatcher", fuzzing::dispatcher);
}

#[test]
fn stable_link_corpus() {
    replay("stable_link", fuzzing::stable_link);
}

#[test]
fn proto_corpus() {
    replay("proto", fuzzing::proto);
}

#[test]
fn proxy_header_corpus() {
    replay("proxy_header", fuzzing::proxy_header);
}
