//! The progress bar on stderr (indicatif): one bar per phase (connecting, running, draining).
//!
//! Owns only drawing. It is hidden with `--no-progress`, and indicatif draws nothing when stderr
//! is not a terminal, so `--json` output and CI logs stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        let target = if enabled {
            ProgressDrawTarget::stderr_with_hz(5)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        Progress { bar }
    }

    /// Starts a phase of `len` steps.
    pub fn phase(&self, name: &str, len: u64) {
        let style = ProgressStyle::with_template(
            "{prefix:>10.bold} [{elapsed_precise}] [{bar:30}] {percent:>3}% {msg}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_prefix(name.to_string());
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_message("");
    }

    pub fn set(&self, pos: u64, msg: String) {
        self.bar.set_position(pos);
        self.bar.set_message(msg);
    }

    /// Prints a line above the bar (or plain to stderr when the bar is hidden and enabled).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            return;
        }
        self.bar.println(line);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
