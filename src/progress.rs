//! Progress of the long commands (backup, restore, migrate, rotate-keys, CS-AI import,
//! bench): a bar with total, rate and ETA when stderr is a terminal, else a line every
//! `progress_interval` for logs.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds between the progress lines written when stderr is not a terminal.
static LINE_INTERVAL_MS: AtomicU64 = AtomicU64::new(5_000);

/// Sets how often progress lines are written when stderr is not a terminal.
pub fn set_line_interval(interval: Duration) {
    LINE_INTERVAL_MS.store(interval.as_millis().max(1) as u64, Ordering::Relaxed);
}

/// What a position counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Sessions,
    /// Bytes of an input file (restore); sessions are counted beside them.
    Bytes,
    Requests,
    /// Session ids and record lists of CS-AI's Redis.
    Keys,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Sessions => "sessions",
            Unit::Bytes => "bytes",
            Unit::Requests => "requests",
            Unit::Keys => "keys",
        }
    }
}

/// The progress of one command.
pub struct Progress {
    what: String,
    unit: Unit,
    total: Option<u64>,
    position: u64,
    started: Instant,
    output: Output,
}

enum Output {
    Bar(ProgressBar),
    Lines { every: Duration, last: Instant },
}

impl Progress {
    /// Starts reporting `what` (the command's name) in `unit`, out of `total` when known.
    pub fn start(what: impl Into<String>, unit: Unit, total: Option<u64>) -> Self {
        let what = what.into();
        let now = Instant::now();
        let output = if std::io::stderr().is_terminal() {
            Output::Bar(bar(&what, unit, total))
        } else {
            Output::Lines {
                every: Duration::from_millis(LINE_INTERVAL_MS.load(Ordering::Relaxed)),
                last: now,
            }
        };
        Self {
            what,
            unit,
            total,
            position: 0,
            started: now,
            output,
        }
    }

    /// Moves on by `n`.
    pub fn add(&mut self, n: u64) {
        self.set_position(self.position + n);
    }

    /// Moves to `position` (bytes read, say).
    pub fn set_position(&mut self, position: u64) {
        self.position = position;
        match &mut self.output {
            Output::Bar(bar) => bar.set_position(position),
            Output::Lines { every, last } => {
                if last.elapsed() >= *every {
                    *last = Instant::now();
                    eprintln!("{}", self.line());
                }
            }
        }
    }

    /// Ends the report: the bar is cleared, or a last line is written.
    pub fn finish(self) {
        match &self.output {
            Output::Bar(bar) => bar.finish_and_clear(),
            Output::Lines { .. } => eprintln!("{} (done)", self.line()),
        }
    }

    /// `backup: 1200 of about 5000 sessions (24%), 240/s, about 16s left`.
    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.position as f64 / elapsed;
        let mut line = format!("{}: {}", self.what, self.position);
        if let Some(total) = self.total.filter(|&t| t > 0) {
            let share = (self.position as f64 / total as f64 * 100.0).min(100.0);
            line += &format!(" of about {total}");
            line += &format!(" {} ({share:.0}%)", self.unit.name());
            line += &format!(", {rate:.0}/s");
            if rate > 0.0 && total > self.position {
                let left = Duration::from_secs_f64((total - self.position) as f64 / rate);
                line += &format!(", about {} left", humantime::format_duration(round(left)));
            }
        } else {
            line += &format!(" {}, {rate:.0}/s", self.unit.name());
        }
        line
    }
}

fn round(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

fn bar(what: &str, unit: Unit, total: Option<u64>) -> ProgressBar {
    let (count, rate) = match unit {
        Unit::Bytes => ("{bytes}/{total_bytes}", "{bytes_per_sec}"),
        _ => ("{human_pos}/{human_len}", "{per_sec}"),
    };
    let template = match total {
        Some(_) => format!(
            "{what}: {{bar:30}} {count} {} ({rate}, ETA {{eta}})",
            unit.name()
        ),
        None => format!("{what}: {{spinner}} {{human_pos}} {} ({rate})", unit.name()),
    };
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_the_total_rate_and_time_left() {
        let progress = Progress {
            what: "backup".into(),
            unit: Unit::Sessions,
            total: Some(1000),
            position: 250,
            started: Instant::now() - Duration::from_secs(10),
            output: Output::Lines {
                every: Duration::from_secs(5),
                last: Instant::now(),
            },
        };
        let line = progress.line();
        assert!(
            line.starts_with("backup: 250 of about 1000 sessions (25%), 25/s, about 30s left"),
            "{line}"
        );
        let unknown = Progress {
            total: None,
            ..progress
        };
        assert!(
            unknown.line().starts_with("backup: 250 sessions, 25/s"),
            "{}",
            unknown.line()
        );
    }
}
