//! Loading a spec file: read, parse, print diagnostics, turn errors into exit code 2.

use std::path::{Path, PathBuf};

use backfill_core::Spec;
use backfill_core::spec::{ParseContext, Parsed};

use crate::UserError;
use crate::output::Output;

/// The first line of a run's stored spec text: where the spec file was.
const PATH_HEADER: &str = "# backfill spec file: ";

/// Reads and parses `path`, printing every diagnostic on stderr. Errors exit 2.
pub(crate) fn load(path: &Path, out: Output) -> anyhow::Result<(Spec, Parsed)> {
    let parsed = parse_file(path)?;
    let file = path.display().to_string();
    for d in &parsed.diagnostics {
        out.note(d.render(&file));
    }
    match &parsed.spec {
        Some(spec) => {
            let mut spec = spec.clone();
            let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            spec.redacted_text = format!("{PATH_HEADER}{}\n{}", abs.display(), spec.redacted_text);
            Ok((spec, parsed))
        }
        None => {
            let errors = parsed.diagnostics.iter().filter(|d| d.is_error()).count();
            Err(UserError::new(format!(
                "{file} has {errors} error{}",
                if errors == 1 { "" } else { "s" }
            ))
            .hint(format!(
                "fix the problems above; `backfill check {file}` re-checks"
            ))
            .into())
        }
    }
}

/// Reads and parses `path` without printing.
pub(crate) fn parse_file(path: &Path) -> anyhow::Result<Parsed> {
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
    Ok(backfill_core::spec::parse(
        &text,
        &ParseContext {
            env: &env,
            base_dir: &base,
        },
    ))
}

/// The spec file a run was created from, as recorded in its stored spec text.
pub(crate) fn recorded_path(spec_text: &str) -> Option<PathBuf> {
    spec_text
        .lines()
        .next()?
        .strip_prefix(PATH_HEADER)
        .map(PathBuf::from)
}
