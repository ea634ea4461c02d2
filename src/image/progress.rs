//! Download progress: a bar per layer (indicatif) on a terminal, plain lines otherwise.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Debug, Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    quiet: bool,
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise; nothing when `quiet`.
    pub fn new(quiet: bool) -> Self {
        let multi = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi, quiet }
    }

    /// No output at all.
    pub fn hidden() -> Self {
        Self {
            multi: None,
            quiet: true,
        }
    }

    /// Progress of one layer, `id` its short digest.
    pub fn layer(&self, id: &str, total: u64) -> LayerProgress {
        let bar = self.multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(total));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix}: {msg:<18} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(id.to_string());
            b.set_message("Waiting");
            b
        });
        LayerProgress {
            bar,
            id: id.to_string(),
            total,
            quiet: self.quiet,
        }
    }
}

/// Progress of one layer.
#[derive(Debug)]
pub struct LayerProgress {
    bar: Option<ProgressBar>,
    id: String,
    total: u64,
    quiet: bool,
}

impl LayerProgress {
    fn plain(&self, msg: &str) {
        if !self.quiet && self.bar.is_none() {
            eprintln!("{}: {msg}", self.id);
        }
    }

    /// The download starts (at `from` bytes when resuming).
    pub fn start(&self, from: u64) {
        if let Some(b) = &self.bar {
            b.set_position(from);
            b.set_message(if from > 0 { "Resuming" } else { "Downloading" });
        }
        if from > 0 {
            self.plain(&format!(
                "Resuming download at {from} of {} bytes",
                self.total
            ));
        } else {
            self.plain(&format!("Downloading {} bytes", self.total));
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// The layer is done: `msg` is e.g. "Download complete" or "Already exists".
    pub fn done(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_position(self.total);
            b.finish_with_message(msg.to_string());
        }
        self.plain(msg);
    }

    /// The layer failed.
    pub fn fail(&self) {
        if let Some(b) = &self.bar {
            b.abandon_with_message("Failed");
        }
    }
}
