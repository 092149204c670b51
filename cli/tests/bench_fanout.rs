//! `zserver bench-fanout` end to end at tiny scale: zserver (plain and encrypted, history
//! none, in memory and durable in the embedded store) and the raw fan-out on one back end, 20 subscribers, one short pass:
//! every row is measured and written to the JSON report. (It checks the machinery, not how
//! fast anything is.)

use std::process::Command;

#[test]
fn a_tiny_fanout_run_reports_every_row() {
    let json = std::env::temp_dir().join(format!("zserver-fanout-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_zserver"))
        .args(["bench-fanout", "--quick", "--backends", "tokio"])
        .args(["--systems", "zserver-plain,zserver-encrypted,raw"])
        .args(["--history", "none,memory,durable"])
        .args([
            "--subscribers",
            "20",
            "--runs",
            "1",
            "--secs",
            "0.05",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run zserver bench-fanout");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("plain/raw"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let rows = report["rows"].as_array().unwrap();
    // 2 shapes x 2 payloads x (2 zserver systems x 3 histories + raw).
    assert_eq!(rows.len(), 28, "{report:#}");
    let durable = rows.iter().filter(|r| r["history"] == "durable").count();
    assert_eq!(durable, 8, "{report:#}");
    for row in rows {
        for field in ["deliveries_per_s", "p50_us", "p99_us"] {
            assert!(
                row[field].as_f64().is_some_and(|v| v > 0.0),
                "{field} not measured: {row}"
            );
        }
        assert!(row["server_rss_per_sub_bytes"].is_number(), "{row}");
        assert_eq!(row["subscribers"], 20, "{row}");
        if row["system"].as_str().unwrap().starts_with("zserver") {
            assert_eq!(row["lost"], 0, "a zserver row lost deliveries: {row}");
        }
    }
}
