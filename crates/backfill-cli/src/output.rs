//! The one place that prints. Human text or JSON on stdout; notes and progress on stderr.
//!
//! A failed command prints its error on stderr: `error:`, `caused by:` and `hint:` lines for
//! people, or with `--json` one JSON object on one line (the last line of stderr), so a script
//! reads the result from stdout and the failure from stderr's last line.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};

/// Writes one line to stdout. A closed pipe (`backfill runs | head -1`) or a full disk is not
/// the command's failure: the line is dropped and the command goes on to its end (a run keeps
/// running, its exit code still says how it ended), instead of `println!`'s panic.
pub(crate) fn out_line(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Writes one line to stderr; a closed stderr drops it, as [`out_line`] does.
pub(crate) fn err_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Output handle passed to every command.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    /// JSON on stdout instead of text.
    pub(crate) json: bool,
}

impl Output {
    /// A line of the command's result for people (suppressed in JSON mode).
    pub(crate) fn line(&self, text: impl AsRef<str>) {
        if !self.json {
            out_line(text.as_ref());
        }
    }

    /// The command's result as JSON (only in JSON mode).
    pub(crate) fn json(&self, value: &serde_json::Value) {
        if self.json {
            out_line(&serde_json::to_string_pretty(value).unwrap_or_default());
        }
    }

    /// A document that is the command's result whatever the mode (`backfill report`: its
    /// format chooses Markdown, JSON or HTML), written to stdout as it is.
    pub(crate) fn text(&self, text: &str) {
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    }

    /// A note about what is happening, on stderr, in both modes (so stdout stays parseable).
    pub(crate) fn note(&self, text: impl AsRef<str>) {
        err_line(text.as_ref());
    }

    /// True when stderr is a terminal that can show a live progress bar.
    pub(crate) fn is_tty(&self) -> bool {
        std::io::stderr().is_terminal()
    }

    /// Prints a failed command's error on stderr: text lines for people, or (`--json`) one
    /// JSON object on one line, `{"error", "hint", "exit", "causes"}` plus `diagnostics` for a
    /// spec with errors.
    pub(crate) fn error(&self, report: &ErrorReport) {
        if self.json {
            err_line(&report.to_json().to_string());
            return;
        }
        err_line(&format!("error: {}", report.message));
        for cause in &report.causes {
            err_line(&format!("  caused by: {cause}"));
        }
        if let Some(hint) = &report.hint {
            err_line(&format!("  hint: {hint}"));
        }
    }
}

/// What is printed about a failed command; every text is already redacted.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ErrorReport {
    /// What went wrong, in one sentence.
    pub(crate) message: String,
    /// The chain of underlying errors, outermost first.
    pub(crate) causes: Vec<String>,
    /// How to fix it, when there is something useful to say.
    pub(crate) hint: Option<String>,
    /// The process exit code: 2 for the user's input, 1 for failed work.
    pub(crate) exit: u8,
    /// A spec's diagnostics (JSON objects as `check --json` prints them), when it has errors.
    pub(crate) diagnostics: Vec<serde_json::Value>,
}

impl ErrorReport {
    /// The `--json` form: `error`, `hint` (null when none), `exit`, `causes`, and
    /// `diagnostics` when there are any.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "error": self.message,
            "hint": self.hint,
            "exit": self.exit,
            "causes": self.causes,
        });
        if !self.diagnostics.is_empty() {
            value["diagnostics"] = serde_json::Value::from(self.diagnostics.clone());
        }
        value
    }
}
