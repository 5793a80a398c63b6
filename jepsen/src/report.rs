//! The files a run leaves in its output directory: `history.jsonl`, `results.json` and a
//! self-contained `report.html` (`test.json` is written by `record.rs`).
//!
//! Owns: file names, writing them, and rendering the report: verdict, op counts, checker
//! results, anomalies, the fault schedule, and two hand-written SVG plots (latency of every op
//! over time coloured ok/fail/info, and throughput per second), both with fault intervals
//! shaded.
//!
//! Invariants: the HTML needs nothing from the network (no JS, no external CSS) and is
//! well-formed XML (every element closed, all text escaped), which the tests check. Plots are
//! bounded: at most [`PLOT_POINTS_MAX`] points (an even sample beyond that).
//!
//! Leaves out: node logs (the runner copies them) and the linearization visualizer.

use std::fmt::Write as _;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::checker::{Anomaly, BankAccounting, Results, Summary};
use crate::history::{Call, History, OpType, Process};
use crate::record::{TestRecord, Workload};

pub const HISTORY_FILE: &str = "history.jsonl";
pub const RESULTS_FILE: &str = "results.json";
pub const REPORT_FILE: &str = "report.html";
pub const TEST_FILE: &str = "test.json";

/// The most undecided reasons [`summary`] prints per checker (results.json has them all).
pub const SUMMARY_REASONS_MAX: usize = 5;
/// The most ops drawn in the latency plot.
pub const PLOT_POINTS_MAX: usize = 20_000;
/// The most faults shaded in the plots and listed in the schedule tables (a kill loop may
/// plan 100,000); the rest are counted.
pub const FAULT_ROWS_MAX: usize = 1_000;
/// Plot geometry, in SVG user units.
const PLOT_WIDTH: f64 = 960.0;
const PLOT_HEIGHT: f64 = 280.0;
const MARGIN_LEFT: f64 = 60.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 16.0;
const MARGIN_BOTTOM: f64 = 36.0;
/// Latency axis floor (the log scale needs one), in ms.
const LATENCY_MS_FLOOR: f64 = 0.1;

const COLOR_OK: &str = "#2a9d4a";
const COLOR_FAIL: &str = "#d1495b";
const COLOR_INFO: &str = "#e09f3e";
/// Jepsen's nemesis shading.
const COLOR_FAULT: &str = "#cccccc";

/// Why an output file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    History {
        path: String,
        #[source]
        source: crate::history::HistoryError,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `dir/history.jsonl`.
pub fn write_history(dir: &Path, history: &History) -> Result<(), ReportError> {
    let path = dir.join(HISTORY_FILE);
    let file = File::create(&path).map_err(io_error(&path))?;
    history
        .write_jsonl(BufWriter::new(file))
        .map_err(|source| ReportError::History {
            path: path.display().to_string(),
            source,
        })
}

/// Writes `dir/results.json` (pretty: people read it).
pub fn write_results(dir: &Path, results: &Results) -> Result<(), ReportError> {
    let path = dir.join(RESULTS_FILE);
    let text = serde_json::to_string_pretty(results).map_err(|source| ReportError::Json {
        path: path.display().to_string(),
        source,
    })?;
    std::fs::write(&path, text + "\n").map_err(io_error(&path))
}

/// Writes `dir/report.html`.
pub fn write_report(
    dir: &Path,
    record: &TestRecord,
    history: &History,
    results: &Results,
) -> Result<(), ReportError> {
    let path = dir.join(REPORT_FILE);
    std::fs::write(&path, render_html(record, history, results)).map_err(io_error(&path))
}

/// Escapes text for HTML/XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A fault as shaded in the plots: seconds since the start.
#[derive(Debug, Clone)]
struct Shade {
    start_s: f64,
    stop_s: f64,
    label: String,
}

/// Fault intervals from the nemesis ops (what happened) or else the schedule (what was planned).
fn shades(record: &TestRecord, history: &History) -> Vec<Shade> {
    let end_s = seconds(history.end_ns());
    let mut open: Vec<(u32, f64, String)> = Vec::new();
    let mut shades = Vec::new();
    for op in history.nemesis_ops() {
        match &op.call {
            Call::StartFault(event) => {
                open.push((event.interval, seconds(op.time_ns), event.fault.describe()))
            }
            Call::StopFault(event) => {
                if let Some(i) = open.iter().position(|(id, _, _)| *id == event.interval) {
                    let (_, start_s, label) = open.remove(i);
                    shades.push(Shade {
                        start_s,
                        stop_s: seconds(op.time_ns),
                        label,
                    });
                }
            }
            _ => {}
        }
    }
    shades.extend(open.into_iter().map(|(_, start_s, label)| Shade {
        start_s,
        stop_s: end_s,
        label,
    }));
    shades.truncate(FAULT_ROWS_MAX);
    if shades.is_empty() && history.nemesis_ops().next().is_none() {
        shades = record
            .schedule
            .iter()
            .map(|interval| Shade {
                start_s: interval.start_ms as f64 / 1000.0,
                stop_s: interval.stop_ms as f64 / 1000.0,
                label: interval.fault.describe(),
            })
            .take(FAULT_ROWS_MAX)
            .collect();
    }
    shades
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn color(outcome: OpType) -> &'static str {
    match outcome {
        OpType::Ok => COLOR_OK,
        OpType::Fail => COLOR_FAIL,
        _ => COLOR_INFO,
    }
}

/// Maps data to the plot area.
struct Axes {
    x_max: f64,
    y_min: f64,
    y_max: f64,
    log_y: bool,
}

impl Axes {
    fn x(&self, value: f64) -> f64 {
        let width = PLOT_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
        MARGIN_LEFT + width * (value / self.x_max).clamp(0.0, 1.0)
    }

    fn y(&self, value: f64) -> f64 {
        let height = PLOT_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
        let (value, min, max) = if self.log_y {
            (
                value.max(self.y_min).log10(),
                self.y_min.log10(),
                self.y_max.log10(),
            )
        } else {
            (value, self.y_min, self.y_max)
        };
        let fraction = if max > min {
            ((value - min) / (max - min)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        PLOT_HEIGHT - MARGIN_BOTTOM - height * fraction
    }

    /// The frame, axis labels, ticks and fault shading.
    fn frame(&self, svg: &mut String, y_label: &str, y_ticks: &[f64], shades: &[Shade]) {
        for shade in shades {
            let (x0, x1) = (self.x(shade.start_s), self.x(shade.stop_s));
            let _ = write!(
                svg,
                r#"<rect x="{x0:.1}" y="{MARGIN_TOP}" width="{:.1}" height="{:.1}" fill="{COLOR_FAULT}" fill-opacity="0.6"><title>{}</title></rect>"#,
                (x1 - x0).max(1.0),
                PLOT_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM,
                escape(&shade.label)
            );
        }
        let bottom = PLOT_HEIGHT - MARGIN_BOTTOM;
        let _ = write!(
            svg,
            r##"<path d="M{MARGIN_LEFT} {MARGIN_TOP} V{bottom} H{}" fill="none" stroke="#444"/>"##,
            PLOT_WIDTH - MARGIN_RIGHT
        );
        for &tick in y_ticks {
            let y = self.y(tick);
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text><path d="M{MARGIN_LEFT} {y:.1} h-4" stroke="#444"/>"##,
                MARGIN_LEFT - 6.0,
                y + 3.0,
                format_tick(tick)
            );
        }
        let step = nice_step(self.x_max / 8.0);
        let mut t = 0.0;
        while t <= self.x_max + 1e-9 {
            let x = self.x(t);
            let _ = write!(
                svg,
                r##"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"##,
                bottom + 14.0,
                format_tick(t)
            );
            t += step;
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">time (s)</text><text x="12" y="{:.1}" font-size="11" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
            (MARGIN_LEFT + PLOT_WIDTH - MARGIN_RIGHT) / 2.0,
            PLOT_HEIGHT - 4.0,
            PLOT_HEIGHT / 2.0,
            PLOT_HEIGHT / 2.0,
            escape(y_label)
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn format_tick(value: f64) -> String {
    if value >= 1.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

fn svg_open(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" viewBox="0 0 {PLOT_WIDTH} {PLOT_HEIGHT}" role="img"><title>{}</title>"#,
        escape(title)
    )
}

/// Every op's latency (invoke to completion; info ops until their info or the end) over time.
fn latency_svg(history: &History, shades: &[Shade]) -> String {
    let end_ns = history.end_ns();
    let points: Vec<(f64, f64, OpType, u64)> = history
        .pair_refs()
        .map(|p| {
            let done_ns = p.completion.map_or(end_ns, |c| c.time_ns);
            let latency_ms = done_ns.saturating_sub(p.invoke.time_ns) as f64 / 1e6;
            (
                seconds(p.invoke.time_ns),
                latency_ms,
                p.outcome(),
                p.invoke.index,
            )
        })
        .collect();
    let stride = points.len().div_ceil(PLOT_POINTS_MAX).max(1);
    let latency_max = points.iter().map(|p| p.1).fold(1.0f64, f64::max);
    let y_max = 10f64.powf(latency_max.log10().ceil());
    let axes = Axes {
        x_max: seconds(end_ns).max(1.0),
        y_min: LATENCY_MS_FLOOR,
        y_max,
        log_y: true,
    };
    let mut ticks = Vec::new();
    let mut tick = LATENCY_MS_FLOOR;
    while tick <= y_max * 1.0001 {
        ticks.push(tick);
        tick *= 10.0;
    }
    let mut svg = svg_open("latency of every op");
    axes.frame(&mut svg, "latency (ms)", &ticks, shades);
    for (time_s, latency_ms, outcome, index) in points.iter().step_by(stride) {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{}"><title>op {index}: {latency_ms:.2} ms</title></circle>"#,
            axes.x(*time_s),
            axes.y(*latency_ms),
            color(*outcome)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Completions per second, one line per outcome.
fn throughput_svg(history: &History, shades: &[Shade]) -> String {
    let end_s = seconds(history.end_ns());
    let buckets = (end_s.ceil() as usize).max(1);
    let mut counts = vec![[0u64; 3]; buckets];
    for pair in history.pair_refs() {
        let Some(completion) = pair.completion else {
            continue;
        };
        let bucket = (seconds(completion.time_ns) as usize).min(buckets - 1);
        let lane = match completion.kind {
            OpType::Ok => 0,
            OpType::Fail => 1,
            _ => 2,
        };
        counts[bucket][lane] += 1;
    }
    let rate_max = counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let axes = Axes {
        x_max: buckets as f64,
        y_min: 0.0,
        y_max: rate_max,
        log_y: false,
    };
    let step = nice_step(rate_max / 4.0);
    let ticks: Vec<f64> = (0..=4)
        .map(|i| i as f64 * step)
        .filter(|t| *t <= rate_max)
        .collect();
    let mut svg = svg_open("throughput");
    axes.frame(&mut svg, "ops/s", &ticks, shades);
    for (lane, outcome) in [OpType::Ok, OpType::Fail, OpType::Info]
        .into_iter()
        .enumerate()
    {
        let mut path = String::new();
        for (second, row) in counts.iter().enumerate() {
            let command = if second == 0 { 'M' } else { 'L' };
            let _ = write!(
                path,
                "{command}{:.1} {:.1} ",
                axes.x(second as f64 + 0.5),
                axes.y(row[lane] as f64)
            );
        }
        let _ = write!(
            svg,
            r#"<path d="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
            path.trim_end(),
            color(outcome)
        );
    }
    svg.push_str("</svg>");
    svg
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}\
.valid{color:#2a9d4a}.invalid{color:#d1495b}.unknown{color:#e09f3e}code{font-size:90%}";

/// The whole report page.
pub fn render_html(record: &TestRecord, history: &History, results: &Results) -> String {
    let shades = shades(record, history);
    let verdict = results.valid.as_str();
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!DOCTYPE html><html xmlns="http://www.w3.org/1999/xhtml"><head><meta charset="utf-8"/><title>metrokv-jepsen {workload} seed {seed}</title><style>{STYLE}</style></head><body><h1>metrokv-jepsen: {workload}, seed {seed}: <span class="{verdict}">{verdict}</span></h1>"#,
        workload = escape(&Workload::list(&record.workloads)),
        seed = record.seed,
    );
    let nemeses: Vec<&str> = record.options.nemeses.iter().map(|n| n.as_str()).collect();
    let _ = write!(
        html,
        "<p>{} nodes, {} s, rate {} ops/s, concurrency {}, nemeses: {}{}</p>",
        record.options.nodes,
        record.options.time_limit_s,
        record.options.rate,
        record.options.concurrency,
        escape(&nemeses.join(", ")),
        record
            .git_sha
            .as_deref()
            .map_or(String::new(), |sha| format!(", git {}", escape(sha)))
    );
    summary_section(&mut html, results);
    counts_section(&mut html, results);
    checkers_section(&mut html, results);
    anomalies_section(&mut html, results);
    html.push_str("<h2>Latency</h2><p>Each op at its invoke time; green ok, red fail, orange info. Grey: faults.</p>");
    html.push_str(&latency_svg(history, &shades));
    html.push_str("<h2>Throughput</h2><p>Completions per second by outcome.</p>");
    html.push_str(&throughput_svg(history, &shades));
    schedule_section(&mut html, record, history);
    html.push_str("</body></html>\n");
    html
}

fn counts_section(html: &mut String, results: &Results) {
    html.push_str("<h2>Ops</h2><table><tr><th>f</th><th>ok</th><th>fail</th><th>info</th></tr>");
    for (f, counts) in &results.counts {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(f),
            counts.ok,
            counts.fail,
            counts.info
        );
    }
    html.push_str("</table>");
}

fn checkers_section(html: &mut String, results: &Results) {
    html.push_str("<h2>Checkers</h2><table><tr><th>checker</th><th>result</th><th>anomalies</th><th>undecided because</th></tr>");
    for (name, checker) in &results.checkers {
        let verdict = checker.valid.as_str();
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td class="{verdict}">{verdict}</td><td>{}</td><td>{}</td></tr>"#,
            escape(name),
            checker.anomaly_count,
            escape(&checker.unknown_reasons.join("; "))
        );
    }
    html.push_str("</table>");
}

/// The figures of [`Summary`]: ops, faults, writes lost, the bank's books.
fn summary_section(html: &mut String, results: &Results) {
    let summary = &results.summary;
    let _ = write!(
        html,
        "<h2>Summary</h2><table><tr><td>client ops</td><td>{} (ok {}, fail {}, info {})</td></tr>\
         <tr><td>history events</td><td>{}</td></tr><tr><td>faults applied</td><td>{}</td></tr>\
         <tr><td>faults skipped</td><td>{}</td></tr>\
         <tr><td>acknowledged writes lost</td><td>{}</td></tr>",
        summary.client_ops,
        summary.outcomes.ok,
        summary.outcomes.fail,
        summary.outcomes.info,
        summary.history_events,
        escape(&faults_text(summary)),
        summary.faults_skipped,
        summary.acknowledged_writes_lost,
    );
    if let Some(bank) = &summary.bank {
        let _ = write!(
            html,
            "<tr><td>bank</td><td>{}</td></tr>",
            escape(&bank_text(bank))
        );
    }
    html.push_str("</table>");
}

/// `kill 100, pause 3` (or `none`).
fn faults_text(summary: &Summary) -> String {
    let total: u64 = summary.faults.values().sum();
    if total == 0 {
        return "none".to_owned();
    }
    let parts: Vec<String> = summary
        .faults
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    format!("{total} ({})", parts.join(", "))
}

/// The bank's books in one line.
fn bank_text(bank: &BankAccounting) -> String {
    let final_total = bank
        .final_total
        .map_or("not read".to_owned(), |t| t.to_string());
    format!(
        "total {} at the start, {final_total} at the end; transfers ok {}, failed {}, \
         indeterminate {} (server: {} committed, {} not applied, {} unknown, of which {} applied \
         by the final balances); final balances {}",
        bank.initial_total,
        bank.transfers.ok,
        bank.transfers.fail,
        bank.transfers.info,
        bank.info_committed,
        bank.info_not_applied,
        bank.info_outcome_unknown,
        bank.unknown_transfers_applied,
        if bank.exact {
            "exactly initial + applied transfers"
        } else {
            "NOT explained by the transfers"
        }
    )
}

/// One row per kind of anomaly and checker: how many, the first, the worst.
fn anomalies_section(html: &mut String, results: &Results) {
    html.push_str("<h2>Anomalies</h2>");
    let mut any = false;
    let cell = |anomaly: &Anomaly| {
        let ops: Vec<String> = anomaly.ops.iter().map(u64::to_string).collect();
        format!(
            "{}{}<br/><code>ops {}</code>",
            anomaly
                .key
                .as_deref()
                .map_or(String::new(), |k| format!("[{}] ", escape(k))),
            escape(&anomaly.message),
            escape(&ops.join(" "))
        )
    };
    for (checker, result) in &results.checkers {
        for group in &result.anomalies {
            if !any {
                html.push_str("<table><tr><th>checker</th><th>kind</th><th>count</th><th>first</th><th>worst</th></tr>");
                any = true;
            }
            let worst = if group.worst == group.first {
                "(the first)".to_owned()
            } else {
                cell(&group.worst)
            };
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{worst}</td></tr>",
                escape(checker),
                group.kind.as_str(),
                group.count,
                cell(&group.first),
            );
        }
    }
    if any {
        html.push_str("</table>");
    } else {
        html.push_str("<p>None.</p>");
    }
}

fn schedule_section(html: &mut String, record: &TestRecord, history: &History) {
    html.push_str("<h2>Faults</h2><table><tr><th>#</th><th>start (s)</th><th>stop (s)</th><th>fault</th></tr>");
    for (i, interval) in record.schedule.iter().enumerate().take(FAULT_ROWS_MAX) {
        let _ = write!(
            html,
            "<tr><td>{i}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
            interval.start_ms as f64 / 1000.0,
            interval.stop_ms as f64 / 1000.0,
            escape(&interval.fault.describe())
        );
    }
    html.push_str("</table>");
    more_rows(html, record.schedule.len());
    if !record.kill_loop.is_empty() {
        let _ = write!(
            html,
            "<p>Kill loop: {} kills planned, one node at a time, each restarted and ready before the next.</p>",
            record.kill_loop.len()
        );
    }
    html.push_str(
        "<h3>Applied</h3><table><tr><th>op</th><th>time (s)</th><th>event</th><th>detail</th></tr>",
    );
    for op in history.nemesis_ops().take(2 * FAULT_ROWS_MAX) {
        let (what, event) = match &op.call {
            Call::StartFault(event) => ("start", event),
            Call::StopFault(event) => ("stop", event),
            _ => continue,
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.3}</td><td>{what} #{}: {}</td><td>{}</td></tr>",
            op.index,
            seconds(op.time_ns),
            event.interval,
            escape(&event.fault.describe()),
            escape(event.detail.as_deref().unwrap_or(""))
        );
    }
    html.push_str("</table>");
    more_rows(html, history.nemesis_ops().count() / 2);
    html.push_str("<h3>Topology</h3><table><tr><th>node</th><th>zone</th></tr>");
    for node in &record.topology.nodes {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&node.name),
            escape(&node.zone)
        );
    }
    html.push_str("</table>");
    let processes = history
        .ops()
        .iter()
        .filter(|op| matches!(op.process, Process::Client(_)))
        .map(|op| op.process)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let _ = write!(
        html,
        "<p>{} ops from {processes} client processes.</p>",
        history.ops().len()
    );
}

/// Says how many rows a capped table left out.
fn more_rows(html: &mut String, rows: usize) {
    if rows > FAULT_ROWS_MAX {
        let _ = write!(
            html,
            "<p>... and {} more (history.jsonl and test.json have them all).</p>",
            rows - FAULT_ROWS_MAX
        );
    }
}

/// A few lines for the terminal: each checker's verdict, each kind of anomaly (count, first,
/// worst), then ops, faults, writes lost, the bank's books and the verdict.
pub fn summary(results: &Results) -> String {
    let mut text = String::new();
    for (name, checker) in &results.checkers {
        let _ = writeln!(
            text,
            "  {name}: {} ({} anomalies)",
            checker.valid.as_str(),
            checker.anomaly_count
        );
        for reason in checker.unknown_reasons.iter().take(SUMMARY_REASONS_MAX) {
            let _ = writeln!(text, "    undecided: {reason}");
        }
        if checker.unknown_reasons.len() > SUMMARY_REASONS_MAX {
            let _ = writeln!(
                text,
                "    ... and {} more undecided (results.json)",
                checker.unknown_reasons.len() - SUMMARY_REASONS_MAX
            );
        }
        for group in &checker.anomalies {
            let show = |anomaly: &Anomaly| {
                let ops: Vec<String> = anomaly.ops.iter().map(u64::to_string).collect();
                format!("ops [{}]: {}", ops.join(" "), anomaly.message)
            };
            let _ = writeln!(
                text,
                "    {} x{}: first {}",
                group.kind.as_str(),
                group.count,
                show(&group.first)
            );
            if group.worst != group.first {
                let _ = writeln!(text, "      worst {}", show(&group.worst));
            }
        }
    }
    let s = &results.summary;
    let _ = writeln!(
        text,
        "ops: {} client ops (ok {}, fail {}, info {}), {} history events",
        s.client_ops, s.outcomes.ok, s.outcomes.fail, s.outcomes.info, s.history_events
    );
    let _ = writeln!(
        text,
        "faults: {}{}",
        faults_text(s),
        if s.faults_skipped > 0 {
            format!(", {} skipped", s.faults_skipped)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        text,
        "acknowledged writes lost: {}",
        s.acknowledged_writes_lost
    );
    if let Some(bank) = &s.bank {
        let _ = writeln!(text, "bank: {}", bank_text(bank));
    }
    let _ = writeln!(text, "result: {}", results.valid.as_str());
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check, CheckOptions, Validity};
    use crate::history::build::*;
    use crate::nemesis::{Fault, FaultEvent, Target};
    use crate::record::tests::bank_record;

    /// Checks that every tag is closed in order (XHTML well-formedness, without a parser).
    fn assert_well_formed(text: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let close = after.find('>').expect("every tag ends");
            let tag = &after[..close];
            rest = &after[close + 1..];
            if tag.starts_with('!') {
                continue;
            }
            assert!(!tag.contains('<'), "stray < in tag {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack.pop().expect("closing tag has an opener");
                assert_eq!(top, name.trim(), "tags close in order");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().expect("tag name");
                stack.push(name.to_owned());
            }
        }
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
        // Every & starts an entity.
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text.len().min(i + 6)];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "bare & at {entity:?}"
            );
        }
    }

    fn small_history() -> History {
        let event = FaultEvent {
            interval: 0,
            fault: Fault::Kill {
                target: Target::Nodes(vec!["n<3>".to_owned()]),
            },
            detail: Some("restarted & healthy".to_owned()),
            skipped: false,
        };
        let mut b = Builder::default();
        b.invoke(0, transfer("t1", "a", "b", 5));
        b.push(
            Process::Nemesis,
            OpType::Info,
            Call::StartFault(event.clone()),
        );
        b.complete(0, OpType::Ok, transfer("t1", "a", "b", 5));
        b.invoke(1, Call::ReadAll(None));
        b.complete(1, OpType::Ok, read_all(&[("a", 5), ("b", 16)]));
        b.push(Process::Nemesis, OpType::Info, Call::StopFault(event));
        b.invoke(2, transfer("t2", "b", "a", 1));
        b.complete(2, OpType::Info, transfer("t2", "b", "a", 1));
        b.invoke(3, transfer("t3", "b", "a", 1));
        b.complete(3, OpType::Fail, transfer("t3", "b", "a", 1));
        let mut ops = b.ops;
        // Spread the ops over a few seconds so the plots have width.
        for op in &mut ops {
            op.time_ns = op.index * 400_000_000;
        }
        History::new(ops).expect("valid")
    }

    #[test]
    fn writes_well_formed_outputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = bank_record();
        let history = small_history();
        let results = check(&record, &history, &CheckOptions::default()).expect("check");
        // The read's total is 21, not 20: an anomaly with a message to escape.
        assert_eq!(results.valid, Validity::Invalid);

        write_history(dir.path(), &history).expect("history");
        write_results(dir.path(), &results).expect("results");
        write_report(dir.path(), &record, &history, &results).expect("report");

        let text = std::fs::read_to_string(dir.path().join(HISTORY_FILE)).expect("read");
        let back = History::read_jsonl(text.as_bytes()).expect("parse");
        assert_eq!(back, history);
        let text = std::fs::read_to_string(dir.path().join(RESULTS_FILE)).expect("read");
        let back: Results = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, results);

        let html = std::fs::read_to_string(dir.path().join(REPORT_FILE)).expect("read");
        assert_well_formed(&html);
        assert!(html.contains("wrong-total"), "anomaly listed");
        assert!(html.contains("n&lt;3&gt;"), "fault text escaped");
        assert!(html.contains(COLOR_FAULT), "fault shaded");
        assert!(html.contains("<circle"), "latency points drawn");
        assert!(!html.contains("<script"), "no scripts");
    }

    #[test]
    fn empty_history_still_renders() {
        let record = bank_record();
        let history = History::default();
        let results = check(&record, &history, &CheckOptions::default()).expect("check");
        let html = render_html(&record, &history, &results);
        assert_well_formed(&html);
        // With no nemesis ops, the planned schedule is shaded.
        assert_eq!(shades(&record, &history).len(), record.schedule.len());
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(37.0), 50.0);
        assert_eq!(nice_step(0.0), 1.0);
    }
}
