//! The progress display of a run: one line on a terminal with the phase, elapsed time, op
//! counts and the current fault; plain lines on stderr otherwise (CI logs), one per phase
//! change and per fault.
//!
//! Owns: [`Progress`]. Leaves out: what the phases are (`runner.rs`).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::history::OpType;

/// How often the spinner line is redrawn.
const PROGRESS_TICK_MS: u64 = 200;

/// The phase display: a spinner line on a terminal, plain lines otherwise.
pub struct Progress {
    bar: ProgressBar,
    /// Plain lines go to stderr when there is no bar to show them.
    plain: bool,
    started: std::time::Instant,
    time_limit_s: u64,
    state: Mutex<(String, Option<String>)>,
    ok: AtomicU64,
    fail: AtomicU64,
    info: AtomicU64,
}

impl Progress {
    pub fn new(time_limit_s: u64) -> Progress {
        let plain = !std::io::stderr().is_terminal();
        let bar = if plain {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {wide_msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(PROGRESS_TICK_MS));
            bar
        };
        Progress {
            bar,
            plain,
            started: std::time::Instant::now(),
            time_limit_s,
            state: Mutex::new(("setup".to_owned(), None)),
            ok: AtomicU64::new(0),
            fail: AtomicU64::new(0),
            info: AtomicU64::new(0),
        }
    }

    /// Prints a line above the bar (or plainly).
    pub fn line(&self, text: &str) {
        if self.plain {
            eprintln!("{text}");
        } else {
            self.bar.suspend(|| eprintln!("{text}"));
        }
    }

    pub fn phase(&self, phase: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = phase.to_owned();
        }
        self.line(&format!(
            "[{:>6.1}s] phase: {phase}",
            self.started.elapsed().as_secs_f64()
        ));
        self.refresh();
    }

    pub fn fault(&self, fault: Option<String>) {
        let text = match &fault {
            Some(f) => format!("fault on: {f}"),
            None => "fault healed".to_owned(),
        };
        self.line(&format!(
            "[{:>6.1}s] {text}",
            self.started.elapsed().as_secs_f64()
        ));
        if let Ok(mut state) = self.state.lock() {
            state.1 = fault;
        }
        self.refresh();
    }

    pub fn count(&self, kind: OpType) {
        let counter = match kind {
            OpType::Ok => &self.ok,
            OpType::Fail => &self.fail,
            _ => &self.info,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.refresh();
    }

    fn refresh(&self) {
        if self.plain {
            return;
        }
        let (phase, fault) = self
            .state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| ("?".to_owned(), None));
        self.bar.set_message(format!(
            "{phase} | {:.0}s of {}s | ok {} fail {} info {} | {}",
            self.started.elapsed().as_secs_f64(),
            self.time_limit_s,
            self.ok.load(Ordering::Relaxed),
            self.fail.load(Ordering::Relaxed),
            self.info.load(Ordering::Relaxed),
            fault.as_deref().unwrap_or("no fault"),
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
