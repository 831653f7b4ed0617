//! Medians, ratios, the markdown tables and the SVG plot.

use std::fmt::Write as _;
use std::time::Instant;

use crate::{RunArgs, Sample};

/// One line per finished sample, as the run goes.
pub fn progress(s: &Sample, started: Instant) {
    eprintln!(
        "[{:>6.0}s] {:<8} {:<14} {:<16} {:>11.0} rec/s {:>8.1} MB/s  cpu {:>6.2} s/M  rss {:>6.0} MB",
        started.elapsed().as_secs_f64(),
        s.part,
        s.client,
        s.setting,
        s.rate,
        s.mbps,
        s.cpu_per_m(),
        s.cost.rss_mb
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Medians of one contender in one setting.
#[derive(Debug, Clone, Copy)]
struct Med {
    rate: f64,
    e2e: f64,
    mbps: f64,
    cpu_per_m: f64,
    rss: f64,
    runs: usize,
}

fn med(samples: &[Sample], part: &str, client: &str, setting: &str) -> Option<Med> {
    let v: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.part == part && s.client == client && s.setting == setting)
        .collect();
    if v.is_empty() {
        return None;
    }
    let m = |f: fn(&Sample) -> f64| median(v.iter().map(|s| f(s)).collect());
    Some(Med {
        rate: m(|s| s.rate),
        e2e: m(|s| s.e2e_rate),
        mbps: m(|s| s.mbps),
        cpu_per_m: m(Sample::cpu_per_m),
        rss: m(|s| s.cost.rss_mb),
        runs: v.len(),
    })
}

fn settings(samples: &[Sample], part: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in samples.iter().filter(|s| s.part == part) {
        if !v.contains(&s.setting) {
            v.push(s.setting.clone());
        }
    }
    v
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn client_tables(out: &mut String, samples: &[Sample], part: &str) {
    let clients = ["faustus", "rdkafka", "java"];
    let _ = writeln!(out, "\n### {part}\n");
    let _ = writeln!(
        out,
        "| setting | client | records/s | MB/s | CPU s / M records | peak RSS MB | runs |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for setting in settings(samples, part) {
        for c in clients {
            if let Some(m) = med(samples, part, c, &setting) {
                let _ = writeln!(
                    out,
                    "| {setting} | {c} | {:.0} | {:.1} | {:.2} | {:.0} | {} |",
                    m.rate, m.mbps, m.cpu_per_m, m.rss, m.runs
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nFaustus against each peer (records/s: above 1 is faster; CPU per record: below 1 is cheaper):\n"
    );
    let _ = writeln!(
        out,
        "| setting | records/s vs librdkafka | records/s vs Java | CPU/record vs librdkafka | CPU/record vs Java |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for setting in settings(samples, part) {
        let f = med(samples, part, "faustus", &setting);
        let r = med(samples, part, "rdkafka", &setting);
        let j = med(samples, part, "java", &setting);
        let get = |m: Option<Med>, g: fn(Med) -> f64| m.map_or(f64::NAN, g);
        let _ = writeln!(
            out,
            "| {setting} | {} | {} | {} | {} |",
            ratio(get(f, |m| m.rate), get(r, |m| m.rate)),
            ratio(get(f, |m| m.rate), get(j, |m| m.rate)),
            ratio(get(f, |m| m.cpu_per_m), get(r, |m| m.cpu_per_m)),
            ratio(get(f, |m| m.cpu_per_m), get(j, |m| m.cpu_per_m)),
        );
    }
}

fn engine_tables(out: &mut String, samples: &[Sample]) {
    rate_tables(
        out,
        samples,
        "engine",
        "engine: page-view count",
        &[
            "faustus",
            "faustus-nocache",
            "kafka-streams",
            "kafka-streams-nocache",
            "faust",
        ],
        &[
            ("faustus", "kafka-streams"),
            ("faustus-nocache", "kafka-streams-nocache"),
            ("faustus", "faustus-nocache"),
            ("faustus", "faust"),
        ],
    );
}

fn windowed_tables(out: &mut String, samples: &[Sample]) {
    rate_tables(
        out,
        samples,
        "windowed",
        "windowed: count per URL per 1-second tumbling window, results to a topic",
        &[
            "faustus",
            "kafka-streams",
            "kafka-streams-nocache",
            "faustus-final",
            "kafka-streams-final",
        ],
        &[
            ("faustus", "kafka-streams"),
            ("faustus", "kafka-streams-nocache"),
            ("faustus-final", "kafka-streams-final"),
        ],
    );
}

fn join_tables(out: &mut String, samples: &[Sample]) {
    rate_tables(
        out,
        samples,
        "join",
        "join: each click left-joined with its URL's title (a table kept from a topic), results to a topic",
        &["faustus", "kafka-streams"],
        &[("faustus", "kafka-streams")],
    );
}

/// Rates, CPU and memory of a part's contenders, then ratios of the pairs.
fn rate_tables(
    out: &mut String,
    samples: &[Sample],
    part: &str,
    title: &str,
    contenders: &[&str],
    pairs: &[(&str, &str)],
) {
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| mode | engine | records/s (first to last commit) | records/s (from process start) | CPU s / M records | records per CPU second | peak RSS MB | runs |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    for mode in settings(samples, part) {
        for e in contenders {
            if let Some(m) = med(samples, part, e, &mode) {
                let _ = writeln!(
                    out,
                    "| {mode} | {e} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {} |",
                    m.rate,
                    m.e2e,
                    m.cpu_per_m,
                    1e6 / m.cpu_per_m,
                    m.rss,
                    m.runs
                );
            }
        }
    }
    let _ = writeln!(out, "\nFaustus against each peer, same mode:\n");
    let _ = writeln!(
        out,
        "| mode | faustus | peer | records/s ratio | records per CPU second ratio |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|");
    for mode in settings(samples, part) {
        for (ours, peer) in pairs {
            if let (Some(f), Some(p)) = (
                med(samples, part, ours, &mode),
                med(samples, part, peer, &mode),
            ) {
                let _ = writeln!(
                    out,
                    "| {mode} | {ours} | {peer} | {} | {} |",
                    ratio(f.rate, p.rate),
                    ratio(p.cpu_per_m, f.cpu_per_m)
                );
            }
        }
    }
    let alo = med(samples, part, contenders[0], "at_least_once");
    let eos = med(samples, part, contenders[0], "exactly_once");
    if let (Some(a), Some(e)) = (alo, eos) {
        let _ = writeln!(
            out,
            "\nFaustus exactly-once costs {:.1}% of its at-least-once records/s.",
            (1.0 - e.rate / a.rate) * 100.0
        );
    }
}

/// An SVG of producer and consumer MB/s against value size, one line per
/// client, for each partition count and compression (one panel per part
/// and setting family).
fn plot(samples: &[Sample]) -> String {
    let clients = [("faustus", "#d62728"), ("rdkafka", "#1f77b4"), ("java", "#2ca02c")];
    let families: Vec<(&str, &str, &str)> = ["producer", "consumer"]
        .iter()
        .flat_map(|p| {
            ["1p none", "6p none", "1p lz4", "6p lz4"]
                .iter()
                .map(move |f| (*p, *f, ""))
        })
        .collect();
    let (pw, ph, cols) = (300.0, 220.0, 4usize);
    let rows = families.len().div_ceil(cols);
    let (w, h) = (pw * cols as f64 + 20.0, ph * rows as f64 + 60.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, (name, colour)) in clients.iter().enumerate() {
        let x = 20.0 + i as f64 * 110.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="12" width="14" height="4" fill="{colour}"/><text x="{}" y="18">{name}</text>"#,
            x + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="380" y="18">value MB/s (median) against value size: 100 B and 1 KB</text>"#
    );
    for (k, (part, family, _)) in families.iter().enumerate() {
        let (ox, oy) = (10.0 + (k % cols) as f64 * pw, 40.0 + (k / cols) as f64 * ph);
        let (x0, y0, x1, y1) = (ox + 45.0, oy + ph - 40.0, ox + pw - 15.0, oy + 25.0);
        let points: Vec<(usize, &str, f64)> = clients
            .iter()
            .flat_map(|(c, _)| {
                [(100usize, "100B"), (1000, "1KB")].into_iter().filter_map(move |(size, l)| {
                    med(samples, part, c, &format!("{l} {family}")).map(|m| (size, *c, m.mbps))
                })
            })
            .collect();
        let max = points.iter().map(|p| p.2).fold(0.0, f64::max).max(1.0) * 1.1;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-weight="bold">{part}, {family}</text>"#,
            ox + 45.0,
            oy + 15.0
        );
        let _ = writeln!(
            s,
            r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"#
        );
        for t in 0..=4 {
            let v = max * t as f64 / 4.0;
            let y = y0 - (y0 - y1) * t as f64 / 4.0;
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end">{v:.0}</text><line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#ddd"/>"##,
                x0 - 4.0,
                y + 4.0
            );
        }
        let xs = |size: usize| if size == 100 { x0 + 30.0 } else { x1 - 30.0 };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">100 B</text><text x="{}" y="{}" text-anchor="middle">1 KB</text>"#,
            xs(100),
            y0 + 15.0,
            xs(1000),
            y0 + 15.0
        );
        for (c, colour) in clients {
            let pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.1 == c)
                .map(|p| (xs(p.0), y0 - (y0 - y1) * p.2 / max))
                .collect();
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (x, y) in pts {
                let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#);
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Writes results.json (every sample), results.md (tables) and
/// throughput.svg into `args.out`, and prints the tables.
pub fn write(args: &RunArgs, samples: &[Sample], secs: f64) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let json = serde_json::to_string_pretty(samples).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("results.json"), json).map_err(io)?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Comparison run: {} rounds, {} MB of values per client run, {} clicks per engine run ({} for faust-streaming); {:.0} s in all.",
        args.rounds, args.volume_mb, args.engine_records, args.faust_records, secs
    );
    if samples.iter().any(|s| s.part == "producer") {
        client_tables(&mut md, samples, "producer");
    }
    if samples.iter().any(|s| s.part == "consumer") {
        client_tables(&mut md, samples, "consumer");
    }
    if samples.iter().any(|s| s.part == "engine") {
        engine_tables(&mut md, samples);
    }
    if samples.iter().any(|s| s.part == "windowed") {
        windowed_tables(&mut md, samples);
    }
    if samples.iter().any(|s| s.part == "join") {
        join_tables(&mut md, samples);
    }
    std::fs::write(args.out.join("results.md"), &md).map_err(io)?;
    std::fs::write(args.out.join("throughput.svg"), plot(samples)).map_err(io)?;
    println!("{md}");
    println!(
        "written: {}/results.md, results.json, throughput.svg",
        args.out.display()
    );
    Ok(())
}
