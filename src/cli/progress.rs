//! Progress of a long command (`rotate`, `keys rotate`) on stderr, so stdout keeps only the
//! result a script reads.

use std::io::IsTerminal;

/// A progress bar on stderr when it is a terminal; otherwise one line per tenth of the work,
/// so a log (or a test driving the command) sees how far it got.
pub struct ProgressBar {
    label: &'static str,
    terminal: bool,
    shown: bool,
    /// Last step drawn: a bar cell on a terminal, a tenth otherwise (redraw only on change).
    last_step: Option<u64>,
}

impl ProgressBar {
    const WIDTH: u64 = 30;

    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
            last_step: None,
        }
    }

    pub fn show(&mut self, done: u64, total: u64) {
        if total == 0 {
            return;
        }
        let steps = if self.terminal { Self::WIDTH } else { 10 };
        let step = (done * steps / total).min(Self::WIDTH);
        if self.last_step == Some(step) {
            return;
        }
        self.last_step = Some(step);
        if self.terminal {
            let filled = step as usize;
            eprint!(
                "\r{} [{}{}] {done}/{total}",
                self.label,
                "#".repeat(filled),
                " ".repeat(Self::WIDTH as usize - filled)
            );
            self.shown = true;
        } else if step > 0 {
            eprintln!("{} {done}/{total}", self.label);
        }
    }

    pub fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}
