//! Loading a spec file: read, parse, print diagnostics, turn errors into exit code 2.
//!
//! A diagnostic prints as `file:line:column: error: path: message` (the line tests and editors
//! match), then the offending source line with a caret under the span, as cargo does, then
//! its `hint:`. The snippet is coloured only for a person at a terminal, never with `--json`.

use std::path::{Path, PathBuf};

use backfill_core::spec::{ParseContext, Parsed};
use backfill_core::{Diagnostic, Spec};

use crate::UserError;
use crate::output::Output;

/// The first line of a run's stored spec text: where the spec file was.
const PATH_HEADER: &str = "# backfill spec file: ";

/// A spec file read and parsed.
pub(crate) struct SpecFile {
    /// The path as the user gave it, for messages.
    pub(crate) file: String,
    /// The file's text, for source snippets.
    pub(crate) text: String,
    /// The spec (when valid) and its diagnostics.
    pub(crate) parsed: Parsed,
}

impl SpecFile {
    /// Prints `diagnostics` (of this file) on stderr, each with its source snippet.
    pub(crate) fn print(&self, diagnostics: &[Diagnostic], out: Output) {
        let styled = !out.json && out.is_tty() && std::env::var_os("NO_COLOR").is_none();
        for d in diagnostics {
            out.note(render(d, &self.file, &self.text, styled));
        }
    }
}

/// Reads and parses `path`, printing every diagnostic on stderr. Errors exit 2.
pub(crate) fn load(path: &Path, out: Output) -> anyhow::Result<(Spec, Parsed)> {
    let spec_file = parse_file(path)?;
    spec_file.print(&spec_file.parsed.diagnostics, out);
    let SpecFile { file, parsed, .. } = spec_file;
    match &parsed.spec {
        Some(spec) => {
            let mut spec = spec.clone();
            let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            spec.redacted_text = format!("{PATH_HEADER}{}\n{}", abs.display(), spec.redacted_text);
            Ok((spec, parsed))
        }
        None => {
            let errors = parsed.diagnostics.iter().filter(|d| d.is_error()).count();
            let mut error = UserError::new(format!(
                "{file} has {errors} error{}",
                if errors == 1 { "" } else { "s" }
            ))
            .hint(format!(
                "fix the problems above; `backfill check {file}` re-checks"
            ));
            error.diagnostics = diagnostics_json(&parsed.diagnostics);
            Err(error.into())
        }
    }
}

/// Reads and parses `path` without printing.
pub(crate) fn parse_file(path: &Path) -> anyhow::Result<SpecFile> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UserError::new(format!("cannot read spec file {}: {e}", path.display()))
            .hint("pass the path of a TOML spec; `backfill demo` writes an example")
    })?;
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    let env = |name: &str| std::env::var(name).ok();
    let parsed = backfill_core::spec::parse(
        &text,
        &ParseContext {
            env: &env,
            base_dir: &base,
        },
    );
    Ok(SpecFile {
        file: path.display().to_string(),
        text,
        parsed,
    })
}

/// The diagnostics as JSON objects (`severity`, `path`, `line`, `column`, `message`, `hint`),
/// as `check --json` and `--json` errors print them.
pub(crate) fn diagnostics_json(diagnostics: &[Diagnostic]) -> Vec<serde_json::Value> {
    diagnostics
        .iter()
        .map(|d| {
            serde_json::json!({
                "severity": if d.is_error() { "error" } else { "warning" },
                "path": d.path,
                "line": d.position.map(|p| p.0),
                "column": d.position.map(|p| p.1),
                "message": d.message,
                "hint": d.hint,
            })
        })
        .collect()
}

/// `file:line:col: error: path: message`, the source line(s) of the span with carets under
/// it (when the diagnostic has a span; passwords masked), then `  hint: …`.
pub(crate) fn render(d: &Diagnostic, file: &str, text: &str, styled: bool) -> String {
    use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
    let mut out = Diagnostic {
        hint: None,
        ..d.clone()
    }
    .render(file);
    if let Some(span) = &d.span {
        // The snippet shows the file with every password masked; the span moves with it.
        use backfill_core::diag::clamp_span;
        use backfill_core::secret::redact;
        let span = clamp_span(text, span.clone());
        let shown = redact(text);
        let span = match shown.len() == text.len() {
            true => span,
            false => redact(&text[..span.start]).len()..redact(&text[..span.end]).len(),
        };
        let span = clamp_span(&shown, span);
        let level = if d.is_error() {
            Level::ERROR
        } else {
            Level::WARNING
        };
        let snippet = Snippet::source(&shown).annotation(AnnotationKind::Primary.span(span));
        let renderer = if styled {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let rendered = renderer.render(&[Group::with_level(level).element(snippet)]);
        out.push('\n');
        out.push_str(rendered.trim_end());
    }
    if let Some(hint) = &d.hint {
        out.push_str(&format!("\n  hint: {hint}"));
    }
    out
}

/// The spec file a run was created from, as recorded in its stored spec text.
pub(crate) fn recorded_path(spec_text: &str) -> Option<PathBuf> {
    spec_text
        .lines()
        .next()?
        .strip_prefix(PATH_HEADER)
        .map(PathBuf::from)
}
