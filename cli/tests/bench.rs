//! `zserver bench` end to end: a tiny run on one back end writes a complete JSON report.
//! (It checks that every figure is measured, not how fast anything is.)

use std::process::Command;

#[test]
fn a_tiny_bench_run_reports_every_row() {
    let json = std::env::temp_dir().join(format!("zserver-bench-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_zserver"))
        .args([
            "bench",
            "--quick",
            "--backends",
            "smol",
            "--runs",
            "1",
            "--secs",
            "0.05",
        ])
        // Compression offered by both ends (used by the bulk rows' 1 MiB chunks).
        .args(["--compression", "lz4", "--connections", "50", "--json"])
        .arg(&json)
        .output()
        .expect("run zserver bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ratio to tarpc"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 21, "{report:#}");
    let labels: Vec<&str> = rows.iter().filter_map(|r| r["label"].as_str()).collect();
    for hostile in [
        "server RSS per peer with 1 KB of a 4 MiB frame, plain",
        "server RSS per peer with 1 KB of a 4 MiB record, encrypted",
        "open 500 connections at once, plain",
        "round trip p50, the back end's transport alone",
    ] {
        assert!(
            labels.contains(&hostile),
            "no row {hostile:?} in {labels:?}"
        );
    }
    for row in rows {
        let value = row["values"][0].as_f64();
        assert!(value.is_some_and(|v| v > 0.0), "row not measured: {row}");
        for base in row["baselines"].as_array().unwrap() {
            assert!(
                base[1].as_f64().is_some_and(|v| v > 0.0),
                "baseline not measured: {row}"
            );
        }
    }
    let ws_rows = report["ws_rows"].as_array().unwrap();
    assert_eq!(ws_rows.len(), 5, "{report:#}");
    for row in ws_rows {
        for key in ["values", "tcp"] {
            let value = row[key][0].as_f64();
            assert!(
                value.is_some_and(|v| v > 0.0),
                "WebSocket row not measured: {row}"
            );
        }
    }
    assert!(stdout.contains("ratio to the same over TCP"), "{stdout}");
    // Issue 15's six targets (1 conn, 8 conns, one-way, encrypted bulk, p50 plain and
    // encrypted), the older encrypted-pipelined one, and the two memory targets.
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 9, "{targets:#?}");
    for goal in [
        "8 conns >= 0.5x",
        "one-way messages/s >= 0.3x",
        "encrypted <= 1.1x",
    ] {
        assert!(
            targets
                .iter()
                .any(|t| t["goal"].as_str().is_some_and(|g| g.contains(goal))),
            "no target {goal:?} in {targets:#?}"
        );
    }
    std::fs::remove_file(json).unwrap();
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let output = Command::new(env!("CARGO_BIN_EXE_zserver"))
        .args(["bench", "--backends", "nope"])
        .output()
        .expect("run zserver bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown back end `nope`"), "{stderr}");
}
