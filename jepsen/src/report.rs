//! The files a run leaves in its output directory: `history.jsonl`, `results.json` and a
//! self-contained `report.html` (`test.json` is written by `record.rs`).
//!
//! Owns: file names, writing them, and rendering the report: verdict, op counts, checker
//! results, anomalies, the fault schedule, and two SVG plots (latency of every op over time
//! coloured ok/fail/info, and throughput per second), both with fault intervals shaded.
//!
//! The page is built with `maud` templates: every value spliced into it (names, messages,
//! fault labels, numbers) is escaped by the template, in text and in attribute values alike.
//! The only markup not written by a template is a few constants that hold no data
//! (`STYLE`, and the two void elements in `META_UTF8` and `BR`).
//!
//! Invariants: the HTML needs nothing from the network (no JS, no external CSS) and is
//! well-formed XML (every element closed, all text escaped), which the tests check with an XML
//! parser. Plots are bounded: at most [`PLOT_POINTS_MAX`] points (an even sample beyond that);
//! tables of faults at most [`FAULT_ROWS_MAX`] rows.
//!
//! Leaves out: node logs (the runner copies them) and the linearization visualizer.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::checker::{Anomaly, BankAccounting, Results, Summary};
use crate::history::{Call, History, Op, OpType, Process};
use crate::nemesis::FaultEvent;
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
/// Axes and ticks.
const COLOR_AXIS: &str = "#444";

const XHTML_NAMESPACE: &str = "http://www.w3.org/1999/xhtml";
const SVG_NAMESPACE: &str = "http://www.w3.org/2000/svg";

/// The page's CSS, spliced as is: a `<style>` element's text is not unescaped by HTML
/// parsers, so it must not be escaped either. A test checks it needs no escaping in XML.
const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}\
.valid{color:#2a9d4a}.invalid{color:#d1495b}.unknown{color:#e09f3e}code{font-size:90%}";

// maud writes a void element (`meta;`, `br;`) in HTML syntax, `<br>`, which is not
// well-formed XML; and `br {}` would give `<br></br>`, which HTML parsers read as two breaks.
// The page uses only these two void elements, written once here as XML empty elements.
/// `<meta charset="utf-8"/>`: fault labels contain `✗` and `↛`.
const META_UTF8: PreEscaped<&str> = PreEscaped(r#"<meta charset="utf-8"/>"#);
/// `<br/>`.
const BR: PreEscaped<&str> = PreEscaped("<br/>");

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

/// A number with a fixed count of decimals (plot coordinates have one, so the file stays
/// small).
struct Fixed(f64, usize);

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.*}", self.1, self.0)
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

    /// Time ticks: 0, then every nice step up to `x_max` (at most about 9).
    fn x_ticks(&self) -> Vec<f64> {
        let step = nice_step(self.x_max / 8.0);
        let mut ticks = Vec::new();
        let mut t = 0.0;
        while t <= self.x_max + 1e-9 {
            ticks.push(t);
            t += step;
        }
        ticks
    }

    /// The fault shading, the frame, axis labels and ticks.
    fn frame(&self, y_label: &str, y_ticks: &[f64], shades: &[Shade]) -> Markup {
        let bottom = PLOT_HEIGHT - MARGIN_BOTTOM;
        let middle = PLOT_HEIGHT / 2.0;
        html! {
            @for shade in shades {
                @let (x0, x1) = (self.x(shade.start_s), self.x(shade.stop_s));
                rect x=(Fixed(x0, 1)) y=(MARGIN_TOP) width=(Fixed((x1 - x0).max(1.0), 1))
                    height=(Fixed(bottom - MARGIN_TOP, 1)) fill=(COLOR_FAULT) fill-opacity="0.6" {
                    title { (shade.label) }
                }
            }
            path d={ "M" (MARGIN_LEFT) " " (MARGIN_TOP) " V" (bottom) " H" (PLOT_WIDTH - MARGIN_RIGHT) }
                fill="none" stroke=(COLOR_AXIS) {}
            @for &tick in y_ticks {
                @let y = self.y(tick);
                text x=(Fixed(MARGIN_LEFT - 6.0, 1)) y=(Fixed(y + 3.0, 1)) font-size="10"
                    text-anchor="end" { (format_tick(tick)) }
                path d={ "M" (MARGIN_LEFT) " " (Fixed(y, 1)) " h-4" } stroke=(COLOR_AXIS) {}
            }
            @for t in self.x_ticks() {
                text x=(Fixed(self.x(t), 1)) y=(Fixed(bottom + 14.0, 1)) font-size="10"
                    text-anchor="middle" { (format_tick(t)) }
            }
            text x=(Fixed((MARGIN_LEFT + PLOT_WIDTH - MARGIN_RIGHT) / 2.0, 1))
                y=(Fixed(PLOT_HEIGHT - 4.0, 1)) font-size="11" text-anchor="middle" { "time (s)" }
            text x="12" y=(Fixed(middle, 1)) font-size="11"
                transform={ "rotate(-90 12 " (Fixed(middle, 1)) ")" } text-anchor="middle" {
                (y_label)
            }
        }
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

/// One plot: `marks` drawn over the frame of `axes`.
fn plot(
    title: &str,
    axes: &Axes,
    y_label: &str,
    y_ticks: &[f64],
    shades: &[Shade],
    marks: Markup,
) -> Markup {
    html! {
        svg xmlns=(SVG_NAMESPACE) width=(PLOT_WIDTH) height=(PLOT_HEIGHT)
            viewBox={ "0 0 " (PLOT_WIDTH) " " (PLOT_HEIGHT) } role="img" {
            title { (title) }
            (axes.frame(y_label, y_ticks, shades))
            (marks)
        }
    }
}

/// One op in the latency plot.
struct LatencyPoint {
    time_s: f64,
    latency_ms: f64,
    outcome: OpType,
    index: u64,
}

/// Every op's latency (invoke to completion; info ops until their info or the end) over time.
fn latency_svg(history: &History, shades: &[Shade]) -> Markup {
    let end_ns = history.end_ns();
    let points: Vec<LatencyPoint> = history
        .pair_refs()
        .map(|p| {
            let done_ns = p.completion.map_or(end_ns, |c| c.time_ns);
            LatencyPoint {
                time_s: seconds(p.invoke.time_ns),
                latency_ms: done_ns.saturating_sub(p.invoke.time_ns) as f64 / 1e6,
                outcome: p.outcome(),
                index: p.invoke.index,
            }
        })
        .collect();
    let stride = points.len().div_ceil(PLOT_POINTS_MAX).max(1);
    let latency_max = points.iter().map(|p| p.latency_ms).fold(1.0f64, f64::max);
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
    let marks = html! {
        @for point in points.iter().step_by(stride) {
            circle cx=(Fixed(axes.x(point.time_s), 1)) cy=(Fixed(axes.y(point.latency_ms), 1)) r="2"
                fill=(color(point.outcome)) {
                title { "op " (point.index) ": " (Fixed(point.latency_ms, 2)) " ms" }
            }
        }
    };
    plot(
        "latency of every op",
        &axes,
        "latency (ms)",
        &ticks,
        shades,
        marks,
    )
}

/// Completions per second, one line per outcome.
fn throughput_svg(history: &History, shades: &[Shade]) -> Markup {
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
    let lines = [OpType::Ok, OpType::Fail, OpType::Info]
        .into_iter()
        .enumerate()
        .map(|(lane, outcome)| (line_path(&axes, &counts, lane), color(outcome)));
    let marks = html! {
        @for (d, stroke) in lines {
            path d=(d) fill="none" stroke=(stroke) stroke-width="1.5" {}
        }
    };
    plot("throughput", &axes, "ops/s", &ticks, shades, marks)
}

/// SVG path data through one lane of per-second counts, at the middle of each second.
fn line_path(axes: &Axes, counts: &[[u64; 3]], lane: usize) -> String {
    let mut path = String::new();
    for (second, row) in counts.iter().enumerate() {
        let command = if second == 0 { 'M' } else { 'L' };
        if second > 0 {
            path.push(' ');
        }
        let _ = write!(
            path,
            "{command}{:.1} {:.1}",
            axes.x(second as f64 + 0.5),
            axes.y(row[lane] as f64)
        );
    }
    path
}

/// The whole report page.
pub fn render_html(record: &TestRecord, history: &History, results: &Results) -> String {
    let shades = shades(record, history);
    let verdict = results.valid.as_str();
    let workload = Workload::list(&record.workloads);
    let options = &record.options;
    let nemeses: Vec<&str> = options.nemeses.iter().map(|n| n.as_str()).collect();
    let page = html! {
        (DOCTYPE)
        html xmlns=(XHTML_NAMESPACE) {
            head {
                (META_UTF8)
                title { "metrokv-jepsen " (workload) " seed " (record.seed) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 {
                    "metrokv-jepsen: " (workload) ", seed " (record.seed) ": "
                    span class=(verdict) { (verdict) }
                }
                p {
                    (options.nodes) " nodes, " (options.time_limit_s) " s, rate " (options.rate)
                    " ops/s, concurrency " (options.concurrency) ", nemeses: " (nemeses.join(", "))
                    @if let Some(sha) = &record.git_sha { ", git " (sha) }
                }
                (summary_section(&results.summary))
                (counts_section(results))
                (checkers_section(results))
                (anomalies_section(results))
                h2 { "Latency" }
                p { "Each op at its invoke time; green ok, red fail, orange info. Grey: faults." }
                (latency_svg(history, &shades))
                h2 { "Throughput" }
                p { "Completions per second by outcome." }
                (throughput_svg(history, &shades))
                (schedule_section(record, history))
            }
        }
    };
    let mut html = page.into_string();
    html.push('\n');
    html
}

/// A table's first row.
fn header_row(names: &[&str]) -> Markup {
    html! {
        tr { @for name in names { th { (name) } } }
    }
}

fn counts_section(results: &Results) -> Markup {
    html! {
        h2 { "Ops" }
        table {
            (header_row(&["f", "ok", "fail", "info"]))
            @for (f, counts) in &results.counts {
                tr { td { (f) } td { (counts.ok) } td { (counts.fail) } td { (counts.info) } }
            }
        }
    }
}

fn checkers_section(results: &Results) -> Markup {
    html! {
        h2 { "Checkers" }
        table {
            (header_row(&["checker", "result", "anomalies", "undecided because"]))
            @for (name, checker) in &results.checkers {
                @let verdict = checker.valid.as_str();
                tr {
                    td { (name) }
                    td class=(verdict) { (verdict) }
                    td { (checker.anomaly_count) }
                    td { (checker.unknown_reasons.join("; ")) }
                }
            }
        }
    }
}

/// The figures of [`Summary`]: ops, faults, writes lost, the bank's books.
fn summary_section(summary: &Summary) -> Markup {
    let outcomes = &summary.outcomes;
    html! {
        h2 { "Summary" }
        table {
            tr {
                td { "client ops" }
                td {
                    (summary.client_ops) " (ok " (outcomes.ok) ", fail " (outcomes.fail)
                    ", info " (outcomes.info) ")"
                }
            }
            tr { td { "history events" } td { (summary.history_events) } }
            tr { td { "faults applied" } td { (faults_text(summary)) } }
            tr { td { "faults skipped" } td { (summary.faults_skipped) } }
            tr { td { "acknowledged writes lost" } td { (summary.acknowledged_writes_lost) } }
            @if let Some(bank) = &summary.bank {
                tr { td { "bank" } td { (bank_text(bank)) } }
            }
        }
    }
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

/// One anomaly in a table cell: key, message, and the ops involved.
fn anomaly_cell(anomaly: &Anomaly) -> Markup {
    let ops: Vec<String> = anomaly.ops.iter().map(u64::to_string).collect();
    html! {
        @if let Some(key) = &anomaly.key { "[" (key) "] " }
        (anomaly.message)
        (BR)
        code { "ops " (ops.join(" ")) }
    }
}

/// One row per kind of anomaly and checker: how many, the first, the worst.
fn anomalies_section(results: &Results) -> Markup {
    let rows: Vec<_> = results
        .checkers
        .iter()
        .flat_map(|(checker, result)| result.anomalies.iter().map(move |group| (checker, group)))
        .collect();
    html! {
        h2 { "Anomalies" }
        @if rows.is_empty() {
            p { "None." }
        } @else {
            table {
                (header_row(&["checker", "kind", "count", "first", "worst"]))
                @for (checker, group) in rows {
                    tr {
                        td { (checker) }
                        td { (group.kind.as_str()) }
                        td { (group.count) }
                        td { (anomaly_cell(&group.first)) }
                        td {
                            @if group.worst == group.first {
                                "(the first)"
                            } @else {
                                (anomaly_cell(&group.worst))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The fault event of a nemesis op, and whether it starts or stops the fault.
fn fault_event(op: &Op) -> Option<(&'static str, &FaultEvent)> {
    match &op.call {
        Call::StartFault(event) => Some(("start", event)),
        Call::StopFault(event) => Some(("stop", event)),
        _ => None,
    }
}

/// The planned schedule, the faults applied, the topology and the clients.
fn schedule_section(record: &TestRecord, history: &History) -> Markup {
    let processes = history
        .ops()
        .iter()
        .filter(|op| matches!(op.process, Process::Client(_)))
        .map(|op| op.process)
        .collect::<BTreeSet<_>>()
        .len();
    html! {
        h2 { "Faults" }
        table {
            (header_row(&["#", "start (s)", "stop (s)", "fault"]))
            @for (i, interval) in record.schedule.iter().enumerate().take(FAULT_ROWS_MAX) {
                tr {
                    td { (i) }
                    td { (Fixed(interval.start_ms as f64 / 1000.0, 1)) }
                    td { (Fixed(interval.stop_ms as f64 / 1000.0, 1)) }
                    td { (interval.fault.describe()) }
                }
            }
        }
        (more_rows(record.schedule.len()))
        @if !record.kill_loop.is_empty() {
            p {
                "Kill loop: " (record.kill_loop.len())
                " kills planned, one node at a time, each restarted and ready before the next."
            }
        }
        h3 { "Applied" }
        table {
            (header_row(&["op", "time (s)", "event", "detail"]))
            @for op in history.nemesis_ops().take(2 * FAULT_ROWS_MAX) {
                @if let Some((what, event)) = fault_event(op) {
                    tr {
                        td { (op.index) }
                        td { (Fixed(seconds(op.time_ns), 3)) }
                        td { (what) " #" (event.interval) ": " (event.fault.describe()) }
                        td { (event.detail.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        (more_rows(history.nemesis_ops().count() / 2))
        h3 { "Topology" }
        table {
            (header_row(&["node", "zone"]))
            @for node in &record.topology.nodes {
                tr { td { (node.name) } td { (node.zone) } }
            }
        }
        p { (history.ops().len()) " ops from " (processes) " client processes." }
    }
}

/// Says how many rows a capped table left out.
fn more_rows(rows: usize) -> Markup {
    html! {
        @if rows > FAULT_ROWS_MAX {
            p {
                "... and " (rows - FAULT_ROWS_MAX)
                " more (history.jsonl and test.json have them all)."
            }
        }
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
    use crate::checker::{check, AnomalyGroup, CheckOptions, Validity};
    use crate::history::build::*;
    use crate::nemesis::{Fault, FaultEvent, Target};
    use crate::record::tests::bank_record;

    /// Text that breaks a page unless escaped, in content and in attribute values.
    const HOSTILE: &str = r#"<b class="x">Tom & "Jerry"</b>"#;

    /// Parses the page as XML (the report's invariant) and checks its namespaces.
    fn parse(html: &str) -> roxmltree::Document<'_> {
        let options = roxmltree::ParsingOptions {
            // `<!DOCTYPE html>` is a DTD without declarations.
            allow_dtd: true,
            ..roxmltree::ParsingOptions::default()
        };
        let document = roxmltree::Document::parse_with_options(html, options)
            .unwrap_or_else(|e| panic!("report is not well-formed XML: {e}"));
        let root = document.root_element();
        assert_eq!(root.tag_name().name(), "html");
        assert_eq!(root.tag_name().namespace(), Some(XHTML_NAMESPACE));
        for svg in root.descendants().filter(|n| n.has_tag_name("svg")) {
            assert_eq!(svg.tag_name().namespace(), Some(SVG_NAMESPACE));
        }
        document
    }

    /// The text of `node` and everything inside it.
    fn text_of(node: roxmltree::Node<'_, '_>) -> String {
        node.descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .collect()
    }

    /// Elements named `tag` whose text contains `needle`.
    fn count_with_text(document: &roxmltree::Document<'_>, tag: &str, needle: &str) -> usize {
        document
            .descendants()
            .filter(|n| n.has_tag_name(tag) && text_of(*n).contains(needle))
            .count()
    }

    fn kill_event(node: &str, detail: &str) -> FaultEvent {
        FaultEvent {
            interval: 0,
            fault: Fault::Kill {
                target: Target::Nodes(vec![node.to_owned()]),
            },
            detail: Some(detail.to_owned()),
            skipped: false,
        }
    }

    fn small_history_with(event: FaultEvent) -> History {
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

    fn small_history() -> History {
        small_history_with(kill_event("n<3>", "restarted & healthy"))
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
        let document = parse(&html);
        assert!(html.contains("wrong-total"), "anomaly listed");
        assert!(html.contains("n&lt;3&gt;"), "fault text escaped");
        assert!(html.contains(COLOR_FAULT), "fault shaded");
        assert!(!html.contains("<script"), "no scripts");
        let count = |tag: &str| {
            document
                .descendants()
                .filter(|n| n.has_tag_name(tag))
                .count()
        };
        assert_eq!(count("svg"), 2, "two plots");
        // One point per op pair: 4 client ops.
        assert_eq!(count("circle"), 4, "latency points drawn");
        // One fault, shaded in both plots.
        assert_eq!(count("rect"), 2);
        // Summary, ops, checkers, anomalies, planned faults, applied faults, topology.
        assert_eq!(count("table"), 7);
        assert_eq!(count("h2"), 7);
        assert!(html.ends_with("</html>\n"));
    }

    #[test]
    fn escapes_every_text_from_the_run() {
        let mut record = bank_record();
        record.git_sha = Some(HOSTILE.to_owned());
        record.topology.nodes[0].zone = HOSTILE.to_owned();
        let history = small_history_with(kill_event(HOSTILE, HOSTILE));
        let mut results = check(&record, &history, &CheckOptions::default()).expect("check");
        let (_, bank) = results.checkers.iter_mut().next().expect("a checker");
        bank.unknown_reasons.push(HOSTILE.to_owned());
        let anomaly = Anomaly {
            kind: bank.anomalies[0].kind,
            ops: vec![1, 2],
            key: Some(HOSTILE.to_owned()),
            message: HOSTILE.to_owned(),
            badness: 1,
        };
        bank.anomalies.push(AnomalyGroup {
            kind: anomaly.kind,
            count: 1,
            first: anomaly.clone(),
            worst: anomaly,
        });
        let counts = *results.counts.values().next().expect("counts");
        results.counts.insert(HOSTILE.to_owned(), counts);

        let html = render_html(&record, &history, &results);
        assert!(!html.contains(HOSTILE), "raw text reached the page");
        assert!(html.contains("&lt;b class=&quot;x&quot;&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt;"));
        // The parser gives the text back exactly, wherever it went.
        let document = parse(&html);
        assert_eq!(
            count_with_text(&document, "b", "Tom"),
            0,
            "no element injected"
        );
        // The fault label, shaded in both plots.
        assert_eq!(count_with_text(&document, "title", HOSTILE), 2);
        // The git sha, in the line under the heading.
        assert_eq!(count_with_text(&document, "p", HOSTILE), 1);
        // Ops table, undecided reason, anomaly (its worst is "(the first)"), applied fault and
        // its detail (start and stop), zone.
        assert_eq!(count_with_text(&document, "td", HOSTILE), 1 + 1 + 1 + 4 + 1);
        let anomaly_cell = document
            .descendants()
            .find(|n| n.has_tag_name("td") && text_of(*n).starts_with('['))
            .expect("anomaly with a key");
        assert_eq!(
            text_of(anomaly_cell),
            format!("[{HOSTILE}] {HOSTILE}ops 1 2")
        );
    }

    #[test]
    fn style_needs_no_escaping() {
        // STYLE is spliced unescaped: in XML it must have no markup characters.
        assert!(!STYLE.contains(['<', '&']), "{STYLE}");
    }

    #[test]
    fn empty_history_still_renders() {
        let record = bank_record();
        let history = History::default();
        let results = check(&record, &history, &CheckOptions::default()).expect("check");
        let html = render_html(&record, &history, &results);
        let document = parse(&html);
        // With no nemesis ops, the planned schedule is shaded.
        assert_eq!(shades(&record, &history).len(), record.schedule.len());
        let rects = document.descendants().filter(|n| n.has_tag_name("rect"));
        assert_eq!(rects.count(), 2 * record.schedule.len());
    }

    #[test]
    fn caps_points_and_rows() {
        let mut record = bank_record();
        let planned = record.schedule[0].clone();
        record.schedule = vec![planned; FAULT_ROWS_MAX + 7];
        let mut b = Builder::default();
        let pairs = 2 * PLOT_POINTS_MAX + 10;
        for _ in 0..pairs {
            b.invoke(0, Call::ReadAll(None));
            b.complete(0, OpType::Fail, Call::ReadAll(None));
        }
        let history = b.history();
        let results = check(&record, &history, &CheckOptions::default()).expect("check");
        let html = render_html(&record, &history, &results);
        let document = parse(&html);
        let circles = document.descendants().filter(|n| n.has_tag_name("circle"));
        // Every third op: an even sample within the cap.
        assert_eq!(circles.count(), pairs.div_ceil(3));
        // No nemesis ops: the plan is shaded, capped, in both plots.
        let rects = document.descendants().filter(|n| n.has_tag_name("rect"));
        assert_eq!(rects.count(), 2 * FAULT_ROWS_MAX);
        assert!(html.contains("<p>... and 7 more (history.jsonl and test.json have them all).</p>"));
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(37.0), 50.0);
        assert_eq!(nice_step(0.0), 1.0);
    }
}
