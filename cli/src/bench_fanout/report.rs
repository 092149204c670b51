//! The fan-out report: a table per shape and payload, the ratios between medians of the
//! same run, the project's targets, and the JSON rows.

use super::pump::PassResult;
use super::Spec;

/// One row of the report: a system at one shape and payload, medians over the passes.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    pub system: &'static str,
    pub backend: String,
    pub channels: usize,
    pub subscribers: usize,
    pub payload: usize,
    pub history: &'static str,
    pub deliveries_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub server_rss_per_sub_bytes: f64,
    /// Deliveries that never came, over every pass.
    pub lost: u64,
    /// Every pass's figures.
    pub runs: Vec<PassResult>,
}

/// `system/backend/history`, for messages.
pub(crate) fn label(spec: &Spec) -> String {
    format!(
        "{}/{}/{} ({} x {})",
        spec.system.name(),
        spec.backend,
        spec.history.name(),
        spec.channels,
        spec.subscribers / spec.channels.max(1)
    )
}

/// `{"rows": [...]}`.
pub(crate) fn json(rows: &[Row]) -> serde_json::Value {
    serde_json::json!({ "rows": rows })
}

fn find<'a>(
    rows: &'a [Row],
    of: &Row,
    system: &str,
    backend: &str,
    history: &str,
) -> Option<&'a Row> {
    rows.iter().find(|r| {
        (
            r.channels,
            r.payload,
            r.system,
            r.backend.as_str(),
            r.history,
        ) == (of.channels, of.payload, system, backend, history)
    })
}

fn ratio(a: f64, b: Option<&Row>) -> String {
    match b {
        Some(b) if b.deliveries_per_s > 0.0 => format!("{:.2}", a / b.deliveries_per_s),
        _ => "-".into(),
    }
}

fn int(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Prints the table, the ratios and the targets to stdout.
pub(crate) fn print(rows: &[Row], failed: &[(Spec, String)]) {
    let mut groups: Vec<(usize, usize, usize)> = rows
        .iter()
        .map(|r| (r.channels, r.subscribers / r.channels.max(1), r.payload))
        .collect();
    groups.sort();
    groups.dedup();
    for &(channels, per, payload) in &groups {
        println!("\n{channels} channel(s) x {per} subscribers, {payload} B payloads (medians; latency: one publication per channel per round)");
        println!(
            "  {:<18} {:<10} {:<7} {:>8} {:>14} {:>9} {:>9} {:>10} {:>7}",
            "system",
            "backend",
            "history",
            "subs",
            "deliveries/s",
            "p50 µs",
            "p99 µs",
            "RSS/sub B",
            "lost"
        );
        let group: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                (r.channels, r.subscribers / r.channels.max(1), r.payload)
                    == (channels, per, payload)
            })
            .collect();
        for r in &group {
            println!(
                "  {:<18} {:<10} {:<7} {:>8} {:>14} {:>9} {:>9} {:>10} {:>7}",
                r.system,
                r.backend,
                r.history,
                r.subscribers,
                int(r.deliveries_per_s),
                int(r.p50_us),
                int(r.p99_us),
                int(r.server_rss_per_sub_bytes),
                r.lost
            );
        }
        let plain: Vec<&&Row> = group
            .iter()
            .filter(|r| r.system == "zserver-plain")
            .collect();
        if !plain.is_empty() {
            println!("  ratios of deliveries/s:");
        }
        for p in plain {
            let enc = find(rows, p, "zserver-encrypted", &p.backend, p.history);
            println!(
                "    {:<10} {:<7} plain/raw {:>5}  plain/nats {:>5}  plain/mosquitto {:>5}  encrypted/plain {:>5}",
                p.backend,
                p.history,
                ratio(p.deliveries_per_s, find(rows, p, "raw", "", "none")),
                ratio(p.deliveries_per_s, find(rows, p, "nats", "", "none")),
                ratio(p.deliveries_per_s, find(rows, p, "mosquitto", "", "none")),
                enc.map_or("-".into(), |e| ratio(e.deliveries_per_s, Some(p))),
            );
        }
    }
    targets(rows);
    for (spec, why) in failed {
        println!("not measured: {}: {why}", label(spec));
    }
}

/// The project's targets, at the largest subscriber count with history in memory:
/// plain ≥ 0.6× raw and ≥ 1.5× nats (≥ 1.0× with durable history), encrypted ≥ 0.9×
/// plain, p99 ≤ nats's, ≤ 200 bytes of server memory per subscription.
fn targets(rows: &[Row]) {
    let Some(most) = rows.iter().map(|r| r.subscribers).max() else {
        return;
    };
    println!("\ntargets (history in memory, {most} subscribers; ratios of medians of this run):");
    for p in rows
        .iter()
        .filter(|r| r.system == "zserver-plain" && r.history == "memory" && r.subscribers == most)
    {
        let raw = find(rows, p, "raw", "", "none");
        let nats = find(rows, p, "nats", "", "none");
        let enc = find(rows, p, "zserver-encrypted", &p.backend, "memory");
        let mut parts = Vec::new();
        if let Some(raw) = raw {
            let x = p.deliveries_per_s / raw.deliveries_per_s;
            parts.push(format!("plain/raw {x:.2} >= 0.6 {}", met(x >= 0.6)));
        }
        if let Some(nats) = nats {
            let x = p.deliveries_per_s / nats.deliveries_per_s;
            parts.push(format!("plain/nats {x:.2} >= 1.5 {}", met(x >= 1.5)));
            parts.push(format!(
                "p99 {} <= nats {} µs {}",
                int(p.p99_us),
                int(nats.p99_us),
                met(p.p99_us <= nats.p99_us)
            ));
        }
        if let Some(enc) = enc {
            let x = enc.deliveries_per_s / p.deliveries_per_s;
            parts.push(format!("enc/plain {x:.2} >= 0.9 {}", met(x >= 0.9)));
            parts.push(format!(
                "enc p99 {} µs{}",
                int(enc.p99_us),
                nats.map_or(String::new(), |n| format!(
                    " {}",
                    met(enc.p99_us <= n.p99_us)
                ))
            ));
        }
        if let Some(nats) = find(rows, p, "nats", "", "none") {
            if let Some(durable) = find(rows, p, "zserver-plain", &p.backend, "durable") {
                let x = durable.deliveries_per_s / nats.deliveries_per_s;
                parts.push(format!("durable/nats {x:.2} >= 1.0 {}", met(x >= 1.0)));
            }
        }
        let rss = p.server_rss_per_sub_bytes;
        parts.push(format!(
            "RSS/sub {} <= 200 B {}",
            int(rss),
            met(rss <= 200.0)
        ));
        if let Some(enc) = enc {
            let rss = enc.server_rss_per_sub_bytes;
            parts.push(format!("enc RSS/sub {} {}", int(rss), met(rss <= 200.0)));
        }
        println!(
            "  {} x {}, {} B, {}: {}",
            p.channels,
            p.subscribers / p.channels.max(1),
            p.payload,
            p.backend,
            parts.join("; ")
        );
    }
}
