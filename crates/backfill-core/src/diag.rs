//! Diagnostics: precise, collected problems with a spec.
//!
//! Validation never stops at the first problem: it collects every [`Diagnostic`], each naming
//! the field path, its `line:column` in the file and, where the parser knows it, the byte span
//! of the offending key or value (so the CLI can show the source line with a caret under it),
//! with a hint where one helps.

use std::fmt;
use std::ops::Range;

/// How bad a problem is: errors stop `check`, `plan` and `run` (exit code 2); warnings are
/// printed and the command goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The spec cannot be used.
    Error,
    /// The spec can be used but something looks wrong.
    Warning,
}

/// One problem found in a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Dotted field path, e.g. `scope.partition`; empty for the whole file.
    pub path: String,
    /// 1-based line and column of the offending value or key, when known.
    pub position: Option<(usize, usize)>,
    /// Byte range of the offending value or key in the spec text, when known; always on
    /// `char` boundaries of that text and starting at `position`.
    pub span: Option<Range<usize>>,
    /// What is wrong, in one sentence.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            path: path.into(),
            position: None,
            span: None,
            message: message.into(),
            hint: None,
        }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(path, message)
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the position.
    pub fn at(mut self, position: Option<(usize, usize)>) -> Self {
        self.position = position;
        self
    }

    /// Sets the span (byte range in `text`, clamped to it) and the position of its start.
    pub fn spanned(mut self, text: &str, span: Range<usize>) -> Self {
        let span = clamp_span(text, span);
        self.position = Some(line_col(text, span.start));
        self.span = Some(span);
        self
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:col: error: path: message` plus a `hint:` line, as printed by the CLI.
    pub fn render(&self, file: &str) -> String {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let place = match self.position {
            Some((line, col)) => format!("{file}:{line}:{col}"),
            None => file.to_owned(),
        };
        let path = if self.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.path)
        };
        let mut out = format!("{place}: {level}: {path}{}", self.message);
        if let Some(hint) = &self.hint {
            out.push_str(&format!("\n  hint: {hint}"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("spec"))
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// `span` shrunk to lie within `text` on `char` boundaries (never panics on any input).
pub fn clamp_span(text: &str, span: Range<usize>) -> Range<usize> {
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let start = floor(span.start);
    start..floor(span.end).max(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn spans_are_clamped_to_the_text_and_give_the_position() {
        let text = "a = 1\nbé = 2\n";
        let d = Diagnostic::error("b", "x").spanned(text, 6..9);
        assert_eq!((d.position, d.span), (Some((2, 1)), Some(6..9)));
        // Inside `é` (bytes 7..9) and past the end: moved back to boundaries.
        assert_eq!(clamp_span(text, 8..99), 7..text.len());
        let (start, end) = (5, 2);
        assert_eq!(clamp_span(text, start..end), 5..5);
    }

    #[test]
    fn renders_with_hint() {
        let d = Diagnostic::error("scope.partition", "must be positive")
            .at(Some((3, 13)))
            .with_hint("use `1h`");
        assert_eq!(
            d.render("x.toml"),
            "x.toml:3:13: error: scope.partition: must be positive\n  hint: use `1h`"
        );
    }
}
