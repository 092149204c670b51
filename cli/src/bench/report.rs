//! The bench's table (back ends as columns, baselines beside them, ratios under each row),
//! the targets we chase, and the same as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{median, Sample, Settings, CONNS, WINDOW};

/// One figure per back end, with the baselines it is compared to.
#[derive(Serialize)]
pub(super) struct Row {
    pub label: String,
    pub unit: &'static str,
    /// Median per back end, in `Settings::backends` order.
    pub values: Vec<f64>,
    /// (name, median) of each baseline; ratios are value / baseline.
    pub baselines: Vec<(String, f64)>,
}

/// A target from the issue, per back end.
#[derive(Serialize)]
pub(super) struct Target {
    pub goal: &'static str,
    /// (measured ratio or value, met) per back end.
    pub results: Vec<(f64, bool)>,
}

/// A row over WebSocket, compared per back end with the same row over TCP.
#[derive(Serialize)]
pub(super) struct WsRow {
    pub label: String,
    pub unit: &'static str,
    /// Median over WebSocket per back end, in `Settings::backends` order.
    pub values: Vec<f64>,
    /// Median of the same row over TCP, per back end.
    pub tcp: Vec<f64>,
}

pub(super) struct Report {
    backends: Vec<String>,
    rows: Vec<Row>,
    ws_rows: Vec<WsRow>,
    targets: Vec<Target>,
}

#[derive(Clone, Copy)]
enum Field {
    Rate,
    P50,
    P99,
}

fn med(samples: &BTreeMap<String, Vec<Sample>>, key: &str, field: Field) -> f64 {
    let Some(runs) = samples.get(key) else {
        return f64::NAN;
    };
    median(
        runs.iter()
            .map(|s| match field {
                Field::Rate => s.rate,
                Field::P50 => s.p50_us,
                Field::P99 => s.p99_us,
            })
            .collect(),
    )
}

impl Report {
    pub(super) fn new(
        s: &Settings,
        samples: &BTreeMap<String, Vec<Sample>>,
        scale: &BTreeMap<String, Vec<(f64, f64)>>,
    ) -> Self {
        let m = |key: &str, f| med(samples, key, f);
        let per_backend = |mode: &str, row: &str, f| {
            s.backends
                .iter()
                .map(|b| m(&format!("{b}/{mode}/{row}"), f))
                .collect::<Vec<_>>()
        };
        let mut rows = Vec::new();
        for (mode, name) in [("plain", "plain"), ("enc", "encrypted")] {
            for (f, pct) in [(Field::P50, "p50"), (Field::P99, "p99")] {
                rows.push(Row {
                    label: format!("round trip {pct}, 1 in flight, {name}"),
                    unit: "us",
                    values: per_backend(mode, "pingpong", f),
                    baselines: vec![
                        ("raw tokio".into(), m("raw/pingpong", f)),
                        ("tarpc".into(), m("tarpc/pingpong", f)),
                    ],
                });
            }
        }
        rows.push(Row {
            label: "round trip p50, the back end's transport alone".into(),
            unit: "us",
            values: per_backend("bare", "pingpong", Field::P50),
            baselines: vec![("raw tokio".into(), m("raw/pingpong", Field::P50))],
        });
        for (row, conns) in [("pipelined1", 1), ("pipelined8", CONNS)] {
            for (mode, name) in [("plain", "plain"), ("enc", "encrypted")] {
                rows.push(Row {
                    label: format!("calls/s, {conns} conn x {WINDOW} in flight, {name}"),
                    unit: "calls/s",
                    values: per_backend(mode, row, Field::Rate),
                    baselines: vec![
                        ("raw tokio".into(), m(&format!("raw/{row}"), Field::Rate)),
                        ("tarpc".into(), m(&format!("tarpc/{row}"), Field::Rate)),
                    ],
                });
            }
        }
        for (mode, name) in [("plain", "plain"), ("enc", "encrypted")] {
            rows.push(Row {
                label: format!("one-way messages/s, {name}"),
                unit: "msgs/s",
                values: per_backend(mode, "oneway", Field::Rate),
                baselines: vec![("raw tokio".into(), m("raw/oneway", Field::Rate))],
            });
        }
        let (aes, loopback) = (
            m("ceiling/aes", Field::Rate),
            m("ceiling/loopback", Field::Rate),
        );
        rows.push(Row {
            label: "bulk upload stream, plain".into(),
            unit: "GiB/s",
            values: per_backend("plain", "bulk", Field::Rate),
            baselines: vec![("loopback copy".into(), loopback)],
        });
        rows.push(Row {
            label: "bulk upload stream, encrypted".into(),
            unit: "GiB/s",
            values: per_backend("enc", "bulk", Field::Rate),
            baselines: vec![
                ("min(loopback, AES)".into(), loopback.min(aes)),
                ("AES-256-GCM 1 core".into(), aes),
            ],
        });
        let scale_of = |key: &str, i: usize| {
            s.backends
                .iter()
                .map(|b| {
                    let runs = scale.get(&format!("{b}/{key}"));
                    median(runs.map_or(vec![], |r| r.iter().map(|x| [x.0, x.1][i]).collect()))
                })
                .collect::<Vec<_>>()
        };
        for (mode, name) in [("plain", "plain"), ("enc", "encrypted")] {
            rows.push(Row {
                label: format!("open {} connections, {name}", s.connections),
                unit: "s",
                values: scale_of(mode, 0),
                baselines: vec![],
            });
            rows.push(Row {
                label: format!("server RSS per idle connection, {name}"),
                unit: "KiB",
                values: scale_of(mode, 1),
                baselines: vec![],
            });
        }
        for (mode, what) in [("plain", "frame, plain"), ("enc", "record, encrypted")] {
            rows.push(Row {
                label: format!("server RSS per peer with 1 KB of a 4 MiB {what}"),
                unit: "KiB",
                values: scale_of(&format!("partial-{mode}"), 1),
                baselines: vec![],
            });
        }
        for n in &s.storms {
            rows.push(Row {
                label: format!("open {n} connections at once, plain"),
                unit: "s",
                values: scale_of(&format!("storm{n}"), 0),
                baselines: vec![],
            });
        }
        let targets = targets(s, &rows);
        let ws_rows = [
            (
                "pingpong",
                "enc",
                Field::P50,
                "round trip p50, 1 in flight, encrypted",
                "us",
            ),
            (
                "pipelined1",
                "enc",
                Field::Rate,
                "calls/s, 1 conn x 64 in flight, encrypted",
                "calls/s",
            ),
            (
                "pipelined8",
                "enc",
                Field::Rate,
                "calls/s, 8 conn x 64 in flight, encrypted",
                "calls/s",
            ),
            (
                "bulk",
                "enc",
                Field::Rate,
                "bulk upload stream, encrypted",
                "GiB/s",
            ),
            (
                "bulk",
                "plain",
                Field::Rate,
                "bulk upload stream, plain",
                "GiB/s",
            ),
        ]
        .into_iter()
        .map(|(row, mode, f, label, unit)| WsRow {
            label: label.into(),
            unit,
            values: per_backend(&format!("ws-{mode}"), row, f),
            tcp: per_backend(mode, row, f),
        })
        .collect();
        Report {
            backends: s.backends.clone(),
            rows,
            ws_rows,
            targets,
        }
    }

    pub(super) fn print(&self) {
        const W: usize = 12;
        print!("\n{:<46}", "row (median of runs)");
        for b in &self.backends {
            print!(" {b:>W$}");
        }
        println!("   baseline");
        for row in &self.rows {
            print!("{:<46}", format!("{} ({})", row.label, row.unit));
            for v in &row.values {
                print!(" {:>W$}", fmt(*v, row.unit));
            }
            let base: Vec<String> = row
                .baselines
                .iter()
                .map(|(n, v)| format!("{n} {}", fmt(*v, row.unit)))
                .collect();
            println!("   {}", base.join(", "));
            for (name, base) in &row.baselines {
                print!("{:<46}", format!("  ratio to {name}"));
                for v in &row.values {
                    print!(" {:>W$}", format!("{:.2}x", v / base));
                }
                println!();
            }
        }
        println!("\nover WebSocket (same servers, their WebSocket listeners):");
        for row in &self.ws_rows {
            print!("{:<46}", format!("{} ({})", row.label, row.unit));
            for v in &row.values {
                print!(" {:>W$}", fmt(*v, row.unit));
            }
            println!();
            print!("{:<46}", "  ratio to the same over TCP");
            for (v, tcp) in row.values.iter().zip(&row.tcp) {
                print!(" {:>W$}", format!("{:.2}x", v / tcp));
            }
            println!();
        }
        println!("\ntargets:");
        for t in &self.targets {
            print!("  {:<58}", t.goal);
            for (b, (v, met)) in self.backends.iter().zip(&t.results) {
                print!("  {b} {v:.2} {}", if *met { "met" } else { "MISSED" });
            }
            println!();
        }
        println!(
            "\nratios are value / baseline, both medians of this run; servers ran in child processes,\n\
             clients in this one, all on this machine's {} cores.",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }

    pub(super) fn json(
        &self,
        s: &Settings,
        samples: &BTreeMap<String, Vec<Sample>>,
        scale: &BTreeMap<String, Vec<(f64, f64)>>,
    ) -> serde_json::Value {
        serde_json::json!({
            "settings": s,
            "backends": self.backends,
            "rows": self.rows,
            "ws_rows": self.ws_rows,
            "targets": self.targets,
            "runs": samples,
            "scale_runs": scale,
        })
    }
}

fn row<'a>(rows: &'a [Row], label: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.label.starts_with(label))
        .expect("row exists")
}

fn targets(s: &Settings, rows: &[Row]) -> Vec<Target> {
    let ratio = |label: &str, baseline: usize, goal: &'static str, ok: fn(f64) -> bool| {
        let r = row(rows, label);
        let base = r.baselines[baseline].1;
        Target {
            goal,
            results: r.values.iter().map(|v| (v / base, ok(v / base))).collect(),
        }
    };
    let rss = row(rows, "server RSS per idle connection, encrypted");
    let partial = row(rows, "server RSS per peer with 1 KB of a 4 MiB record");
    let _ = s;
    // The targets of issue 15 (engine v2), then the older ones still kept.
    vec![
        ratio(
            "calls/s, 1 conn x 64 in flight, plain",
            0,
            "plain pipelined calls, 1 conn >= 0.9x raw tokio echo",
            |r| r >= 0.9,
        ),
        ratio(
            "calls/s, 8 conn x 64 in flight, plain",
            0,
            "plain pipelined calls, 8 conns >= 0.5x raw tokio echo",
            |r| r >= 0.5,
        ),
        ratio(
            "one-way messages/s, plain",
            0,
            "one-way messages/s >= 0.3x raw tokio sink",
            |r| r >= 0.3,
        ),
        ratio(
            "bulk upload stream, encrypted",
            0,
            "encrypted bulk >= 0.8x min(loopback, AES-GCM)",
            |r| r >= 0.8,
        ),
        ratio(
            "round trip p50, 1 in flight, plain",
            0,
            "p50 round trip, plain <= 1.1x raw tokio ping-pong",
            |r| r <= 1.1,
        ),
        ratio(
            "round trip p50, 1 in flight, encrypted",
            0,
            "p50 round trip, encrypted <= 1.1x raw tokio ping-pong",
            |r| r <= 1.1,
        ),
        ratio(
            "calls/s, 1 conn x 64 in flight, encrypted",
            1,
            "encrypted pipelined calls >= 2x tarpc (plain)",
            |r| r >= 2.0,
        ),
        Target {
            goal: "<= 2.5 KiB server RSS per idle encrypted connection",
            results: rss.values.iter().map(|v| (*v, *v <= 2.5)).collect(),
        },
        Target {
            goal: "<= 16 KiB server RSS per peer with 1 KB of a 4 MiB record",
            results: partial.values.iter().map(|v| (*v, *v <= 16.0)).collect(),
        },
    ]
}

fn fmt(v: f64, unit: &str) -> String {
    if v.is_nan() {
        return "-".into();
    }
    match unit {
        "calls/s" | "msgs/s" if v >= 1e6 => format!("{:.2}M", v / 1e6),
        "calls/s" | "msgs/s" => format!("{:.1}k", v / 1e3),
        "GiB/s" | "s" => format!("{v:.2}"),
        _ => format!("{v:.1}"),
    }
}
