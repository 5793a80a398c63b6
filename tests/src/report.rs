//! The side-by-side benchmark report (`scripts/bench.sh`): rows of `metrokv bench --json`
//! output, tagged with their scenario, turned into a Markdown table with the metrokv/etcd ratio
//! in every row and an SVG chart of throughput and p99 against clients.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde::Serialize;

/// One line of `results.jsonl`: a scenario and the bench report it produced.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Row {
    /// `matrix`, `value-size` or `failover`.
    pub scenario: String,
    pub report: Report,
}

/// The parts of `metrokv bench --json` the report uses.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Report {
    pub options: ReportOptions,
    pub ops_per_sec: f64,
    pub latency: Latency,
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    pub server_cpu_us_per_op: Option<f64>,
    #[serde(default)]
    pub longest_gap_ms: f64,
    #[serde(default)]
    pub conflicts: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ReportOptions {
    pub system: String,
    pub workload: String,
    pub clients: usize,
    pub value_size: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Parse `results.jsonl`; a line that does not parse is an error naming it.
pub fn parse(text: &str) -> Result<Vec<Row>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// What one cell of the table compares: the same workload, clients and value size.
type Cell = (String, usize, usize);

fn cells(rows: &[Row], scenario: &str) -> BTreeMap<Cell, BTreeMap<String, Report>> {
    let mut out: BTreeMap<Cell, BTreeMap<String, Report>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.scenario == scenario) {
        let o = &row.report.options;
        out.entry((o.workload.clone(), o.clients, o.value_size))
            .or_default()
            .insert(o.system.clone(), row.report.clone());
    }
    out
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn side(r: Option<&Report>) -> String {
    match r {
        Some(r) => {
            let errors: u64 = r.errors.values().sum();
            let mut s = format!(
                "{:.0} ({} / {} ms)",
                r.ops_per_sec,
                ms(r.latency.p50_us),
                ms(r.latency.p99_us)
            );
            if errors > 0 {
                let _ = write!(s, ", {errors} errors");
            }
            s
        }
        None => "-".into(),
    }
}

fn cpu(r: Option<&Report>) -> String {
    r.and_then(|r| r.server_cpu_us_per_op)
        .map_or_else(|| "-".into(), |us| format!("{us:.0}"))
}

/// The Markdown report.
pub fn markdown(rows: &[Row], title: &str) -> String {
    let mut out = format!("# {title}\n\n");
    out.push_str(
        "ops/s (p50 / p99 ms) for each system, the throughput ratio metrokv / etcd, and the \
         servers' CPU per operation (µs, all three nodes together).\n\n",
    );
    out.push_str("| workload | clients | value bytes | metrokv | etcd | ratio | CPU µs/op metrokv | CPU µs/op etcd |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for scenario in ["matrix", "value-size"] {
        for ((workload, clients, size), systems) in cells(rows, scenario) {
            let m = systems.get("metrokv");
            let e = systems.get("etcd");
            let _ = writeln!(
                out,
                "| {workload} | {clients} | {size} | {} | {} | {} | {} | {} |",
                side(m),
                side(e),
                ratio(
                    m.map_or(0.0, |r| r.ops_per_sec),
                    e.map_or(0.0, |r| r.ops_per_sec)
                ),
                cpu(m),
                cpu(e),
            );
        }
    }
    let failover: Vec<&Row> = rows.iter().filter(|r| r.scenario == "failover").collect();
    if !failover.is_empty() {
        out.push_str("\nLeader failover: the leader is SIGKILLed during a put load; the longest time without an acknowledged put (ms), per trial.\n\n");
        out.push_str("| system | trials | median ms | max ms |\n|---|---|---|---|\n");
        let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for r in failover {
            by.entry(r.report.options.system.as_str())
                .or_default()
                .push(r.report.longest_gap_ms);
        }
        for (system, mut gaps) in by {
            gaps.sort_by(f64::total_cmp);
            let list: Vec<String> = gaps.iter().map(|g| format!("{g:.0}")).collect();
            let _ = writeln!(
                out,
                "| {system} | {} | {:.0} | {:.0} |",
                list.join(", "),
                gaps[gaps.len() / 2],
                gaps[gaps.len() - 1]
            );
        }
    }
    out
}

const COLORS: [(&str, &str); 2] = [("metrokv", "#1f77b4"), ("etcd", "#d62728")];

/// An SVG chart: per matrix workload, ops/s (solid) and p99 (dashed, right axis) against clients
/// (log scale), one line per system.
pub fn svg(rows: &[Row]) -> String {
    let matrix = cells(rows, "matrix");
    let workloads: Vec<String> = {
        let mut w: Vec<String> = matrix.keys().map(|(w, _, _)| w.clone()).collect();
        w.dedup();
        w
    };
    let (pw, ph, pad) = (360.0, 220.0, 50.0);
    let width = pw * 2.0 + pad;
    let rows_n = workloads.len().div_ceil(2).max(1) as f64;
    let height = (ph + pad) * rows_n + pad;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    );
    for (i, workload) in workloads.iter().enumerate() {
        let x0 = pad / 2.0 + (i % 2) as f64 * (pw + pad / 2.0);
        let y0 = pad + (i / 2) as f64 * (ph + pad);
        let points: Vec<(usize, &String, &Report)> = matrix
            .iter()
            .filter(|((w, _, _), _)| w == workload)
            .flat_map(|((_, c, _), systems)| systems.iter().map(move |(s, r)| (*c, s, r)))
            .collect();
        let max_ops = points.iter().map(|p| p.2.ops_per_sec).fold(1.0, f64::max);
        let max_p99 = points
            .iter()
            .map(|p| p.2.latency.p99_us as f64)
            .fold(1.0, f64::max);
        let max_c = points.iter().map(|p| p.0).max().unwrap_or(1).max(2) as f64;
        let x = |c: usize| x0 + 30.0 + (c.max(1) as f64).ln() / max_c.ln() * (pw - 60.0);
        let _ = writeln!(
            out,
            "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\n<text x=\"{}\" y=\"{}\">{workload}: ops/s (solid, max {max_ops:.0}), p99 (dashed, max {:.1} ms) vs clients</text>",
            x0 + 4.0,
            y0 - 6.0,
            max_p99 / 1000.0
        );
        for (system, color) in COLORS {
            let mut mine: Vec<&(usize, &String, &Report)> =
                points.iter().filter(|p| p.1 == system).collect();
            mine.sort_by_key(|p| p.0);
            let line = |value: &dyn Fn(&Report) -> f64, max: f64| {
                mine.iter()
                    .map(|p| {
                        let y = y0 + ph - 10.0 - value(p.2) / max * (ph - 30.0);
                        format!("{:.1},{:.1}", x(p.0), y)
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let ops = line(&|r| r.ops_per_sec, max_ops);
            let p99 = line(&|r| r.latency.p99_us as f64, max_p99);
            let _ = writeln!(
                out,
                "<polyline points=\"{ops}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n<polyline points=\"{p99}\" fill=\"none\" stroke=\"{color}\" stroke-dasharray=\"4 3\"/>"
            );
            for p in &mine {
                let _ = writeln!(
                    out,
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    x(p.0),
                    y0 + ph + 12.0,
                    p.0
                );
            }
        }
    }
    for (i, (system, color)) in COLORS.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"16\" fill=\"{color}\">{system}</text>",
            10.0 + i as f64 * 80.0
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &str, system: &str, workload: &str, clients: usize, ops: f64) -> String {
        format!(
            r#"{{"scenario":"{scenario}","report":{{"options":{{"system":"{system}","workload":"{workload}","clients":{clients},"value_size":100}},"ops_per_sec":{ops},"latency":{{"p50_us":1000,"p99_us":5000}},"errors":{{}},"server_cpu_us_per_op":200.0,"longest_gap_ms":{ops},"conflicts":0}}}}"#
        )
    }

    #[test]
    fn the_table_pairs_the_systems_and_gives_the_ratio() {
        let text = [
            row("matrix", "metrokv", "put", 64, 8000.0),
            row("matrix", "etcd", "put", 64, 4000.0),
            row("matrix", "metrokv", "get", 1, 900.0),
            row("failover", "metrokv", "put", 8, 400.0),
            row("failover", "metrokv", "put", 8, 500.0),
            row("failover", "etcd", "put", 8, 1200.0),
        ]
        .join("\n");
        let rows = parse(&text).unwrap();
        let md = markdown(&rows, "t");
        assert!(
            md.contains("| put | 64 | 100 | 8000 (1.00 / 5.00 ms) | 4000 (1.00 / 5.00 ms) | 2.00x | 200 | 200 |"),
            "{md}"
        );
        // A system missing from a cell shows as a dash, not a ratio.
        assert!(
            md.contains("| get | 1 | 100 | 900 (1.00 / 5.00 ms) | - | - |"),
            "{md}"
        );
        assert!(md.contains("| metrokv | 400, 500 | 500 | 500 |"), "{md}");
        let chart = svg(&rows);
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        assert!(chart.contains("polyline"));
        assert!(parse("{not json").is_err());
    }
}
