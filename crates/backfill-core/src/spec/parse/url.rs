//! Connection URLs (`source.url`, `target.url`, `throttle.probe.url`): `${VAR}` expanded from
//! the environment, the scheme checked against what this build can connect to, `mariadb://`
//! rewritten to `mysql://`, and a relative SQLite path resolved against the spec's folder for
//! connecting while the plan identifies the database as written.

use crate::secret::{SecretUrl, redact};
use crate::spec::ParseContext;
use crate::spec::schema::suggest;

use super::walker::{Table, Walker, join};

/// Schemes this build can connect to.
pub(crate) const SUPPORTED_SCHEMES: &[&str] =
    &["sqlite", "postgres", "postgresql", "mysql", "mariadb"];

impl Walker<'_> {
    /// The `url` of `section`, validated; `None` (with a diagnostic) when unusable.
    pub(super) fn url(
        &mut self,
        table: &Table<'_>,
        section: &str,
        ctx: &ParseContext<'_>,
    ) -> Option<SecretUrl> {
        let (raw, span) = self.string(table, section, "url", true)?;
        let path = join(section, "url");
        let expanded = match expand_env(&raw, ctx.env) {
            Ok(s) => s,
            Err(var) => {
                self.error(
                    &path,
                    Some(span),
                    format!("environment variable `{var}` is not set"),
                )
                .hint = Some(format!(
                    "export {var}=… before running, or remove `${{{var}}}` from the URL"
                ));
                return None;
            }
        };
        let scheme = expanded
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !expanded.contains(':') || !SUPPORTED_SCHEMES.contains(&scheme.as_str()) {
            self.error(
                &path,
                Some(span),
                format!("unsupported URL `{}`", redact(&expanded)),
            )
            .hint = Some(
                match expanded
                    .contains(':')
                    .then(|| suggest(&scheme, SUPPORTED_SCHEMES))
                    .flatten()
                {
                    Some(close) => format!(
                        "did you mean `{close}://`? (supported schemes: {})",
                        SUPPORTED_SCHEMES.join(", ")
                    ),
                    None => format!(
                        "supported schemes: {}; e.g. `sqlite://data/events.db` (relative to the spec file)",
                        SUPPORTED_SCHEMES.join(", ")
                    ),
                },
            );
            return None;
        }
        // MariaDB speaks the MySQL protocol; the driver only knows `mysql://`.
        let expanded = match expanded.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => expanded,
        };
        // Connect through the resolved path; identify the database as written, so the plan
        // does not depend on where the spec lies.
        Some(SecretUrl::new(resolve_sqlite_path(&expanded, ctx.base_dir)).written_as(expanded))
    }
}

/// Replaces `${VAR}` with the variable's value; `Err(VAR)` for the first unset variable.
fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        out.push_str(&env(var).ok_or_else(|| var.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Makes a relative `sqlite://` path absolute against the spec's folder, so a spec works from
/// any working directory.
fn resolve_sqlite_path(url: &str, base: &std::path::Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_owned();
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    // `sqlite://user:password@host/…` is not a file path; leave it for the driver to refuse
    // (and for redaction to recognise).
    if path.is_empty() || path.starts_with(':') || path.starts_with('/') || path.contains('@') {
        return url.to_owned();
    }
    let abs = base.join(path);
    let mut out = format!("sqlite://{}", abs.display());
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}
