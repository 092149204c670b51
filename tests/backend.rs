//! `ZSERVER_BACKEND` picks the default back end at run time among those compiled in, so one
//! test build runs the behavioural suite on each. Checked in child processes (this test
//! binary run again), since the choice is made once per process.

use std::process::Command;

/// In a child: prints the default back end and the name of the runtime that actually runs
/// a server, for the parent to read.
#[test]
fn probe() {
    if std::env::var("ZSERVER_BACKEND_PROBE").is_err() {
        return;
    }
    let server = zserver::block_on(async {
        zserver::server()
            .bind("127.0.0.1:0")
            .await
            .expect("bind a server")
    });
    let transport = zserver::default_transport();
    println!(
        "probe: default={} transport={} first={}",
        zserver::default_backend(),
        transport.name(),
        zserver::backends()[0]
    );
    zserver::block_on(server.shutdown());
}

fn run_probe(backend: &str) -> std::process::Output {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", "probe", "--nocapture", "--test-threads=1"])
        .env("ZSERVER_BACKEND_PROBE", "1")
        .env(zserver::BACKEND_ENV, backend)
        .output()
        .expect("run the probe")
}

#[test]
fn the_environment_picks_each_compiled_in_back_end() {
    for backend in zserver::backends() {
        let out = run_probe(backend);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{backend}: {stdout}");
        // The harness prints "test probe ... " on the same line before the probe's output.
        let line = stdout
            .lines()
            .find_map(|l| l.find("probe: default=").map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("{backend}: no probe line in {stdout}"));
        assert_eq!(
            line,
            format!("probe: default={backend} transport={backend} first={backend}")
        );
    }
}

#[test]
fn a_back_end_not_compiled_in_is_refused_by_name() {
    let out = run_probe("no-such-runtime");
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("ZSERVER_BACKEND=no-such-runtime: this build has the back ends"),
        "{all}"
    );
}
