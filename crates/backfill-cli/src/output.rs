//! The one place that prints. Human text or JSON on stdout; notes and progress on stderr.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::IsTerminal;

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
            println!("{}", text.as_ref());
        }
    }

    /// The command's result as JSON (only in JSON mode).
    pub(crate) fn json(&self, value: &serde_json::Value) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        }
    }

    /// A note about what is happening, on stderr, in both modes (so stdout stays parseable).
    pub(crate) fn note(&self, text: impl AsRef<str>) {
        eprintln!("{}", text.as_ref());
    }

    /// True when stderr is a terminal that can show a live progress bar.
    pub(crate) fn is_tty(&self) -> bool {
        std::io::stderr().is_terminal()
    }

    /// Prints an error with its causes and hint on stderr.
    pub(crate) fn error(&self, message: &str, causes: &[String], hint: Option<&str>) {
        eprintln!("error: {message}");
        for cause in causes {
            eprintln!("  caused by: {cause}");
        }
        if let Some(hint) = hint {
            eprintln!("  hint: {hint}");
        }
    }
}
