//! Progress bars for long passes: shown on a terminal, silent otherwise.
//!
//! Passes report through [`qc_ir::pass::Progress`]; [`for_stderr`] gives the driver's implementation:
//! an indicatif bar per pass on standard error when it is a terminal (and `QC_NO_PROGRESS` is unset),
//! and nothing at all when standard error is a file or a pipe, so logs and tests stay clean.

use std::cell::RefCell;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qc_ir::pass::{NoProgress, Progress};

/// One bar at a time, replaced when another pass starts reporting.
pub struct TerminalProgress {
    bar: RefCell<Option<(String, ProgressBar)>>,
}

impl TerminalProgress {
    fn new() -> Self {
        TerminalProgress {
            bar: RefCell::new(None),
        }
    }
}

impl Progress for TerminalProgress {
    fn step(&self, pass: &str, done: usize, total: usize, item: &str) {
        let mut slot = self.bar.borrow_mut();
        let same = slot.as_ref().is_some_and(|(p, _)| p == pass);
        if !same {
            if let Some((_, old)) = slot.take() {
                old.finish_and_clear();
            }
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(pass.to_string());
            *slot = Some((pass.to_string(), bar));
        }
        let (_, bar) = slot.as_ref().expect("just set");
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(item.to_string());
        if done >= total {
            bar.finish_and_clear();
            *slot = None;
        }
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        if let Some((_, bar)) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}

/// The progress sink for this process: bars when standard error is a terminal, else nothing.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() && std::env::var_os("QC_NO_PROGRESS").is_none() {
        Box::new(TerminalProgress::new())
    } else {
        Box::new(NoProgress)
    }
}
