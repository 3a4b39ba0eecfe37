//! Every spec key, declared once with its type, default and documentation.
//!
//! The parser uses this table to reject unknown keys (with a "did you mean" suggestion) and the
//! reference documentation in `docs/spec.md` is generated from it; a test fails when the
//! committed file is stale.

/// One key of the spec file.
#[derive(Clone, Copy, Debug)]
pub struct KeyDoc {
    /// Dotted path; `scope.list[].start` is a key of each element of the `scope.list` array.
    pub path: &'static str,
    /// The TOML type, in words.
    pub kind: &'static str,
    /// The default when absent; `None` means required (or "not set" when `optional`).
    pub default: Option<&'static str>,
    /// True when the key may be absent without a default.
    pub optional: bool,
    /// What the key means.
    pub doc: &'static str,
}

const fn key(
    path: &'static str,
    kind: &'static str,
    default: Option<&'static str>,
    optional: bool,
    doc: &'static str,
) -> KeyDoc {
    KeyDoc {
        path,
        kind,
        default,
        optional,
        doc,
    }
}

/// Sections (tables) of the spec, with their documentation.
pub const SECTIONS: &[(&str, &str)] = &[
    (
        "",
        "Top level: what the backfill is called and why it exists.",
    ),
    (
        "source",
        "Where rows come from: a connection and a query for one window.",
    ),
    ("target", "Where rows go, and how they are written."),
    (
        "scope",
        "What to cover. Exactly one of: a time range (`start`, `end`, `partition`), a key range \
         (`key`, `from`, `to`, `chunk`), or an explicit `list` of windows.",
    ),
    (
        "limits",
        "How hard to push: concurrency, rate, batch size and retries.",
    ),
];

/// Every key of the spec.
pub const SPEC_KEYS: &[KeyDoc] = &[
    key(
        "name",
        "string",
        None,
        false,
        "Name of the backfill: letters, digits, `_` and `-`. Runs of the same name resume each other.",
    ),
    key(
        "reason",
        "string",
        None,
        true,
        "Why this backfill exists; recorded on every run. `backfill run --reason` overrides it; a run needs one or the other.",
    ),
    key(
        "source.url",
        "string",
        None,
        false,
        "Connection URL: `sqlite://events.db` (relative to the spec file), `postgres://user:${PGPASSWORD}@host:5432/db`, `mysql://user@host:3306/db` (`mariadb://` too). `${VAR}` is replaced by the environment variable VAR, so passwords stay out of the file. TLS: add `?sslmode=require` (PostgreSQL) or `?ssl-mode=REQUIRED` (MySQL).",
    ),
    key(
        "source.query",
        "string",
        None,
        false,
        "SQL returning the rows of one window. Must use `:start` and `:end` (bound parameters, never pasted into the text) and return the target's key columns.",
    ),
    key(
        "source.time_format",
        "string",
        Some("\"rfc3339\" for SQLite, \"native\" otherwise"),
        false,
        "How `:start`/`:end` are bound for time scopes: `native` (the database's timestamp type: PostgreSQL `timestamptz`, MySQL `DATETIME` in UTC), `rfc3339` (text, UTC, `Z` suffix), `unix` (seconds), `unix_ms`, or a strftime pattern such as `%Y-%m-%d %H:%M:%S`.",
    ),
    key(
        "source.time_column",
        "string",
        None,
        true,
        "The column the query filters on; `check` samples it to warn when `time_format` does not match the data.",
    ),
    key(
        "target.url",
        "string",
        None,
        false,
        "Connection URL of the target database (same forms as `source.url`).",
    ),
    key(
        "target.table",
        "string",
        None,
        true,
        "Target table (optionally `schema.table`). Required for `upsert` and `replace`.",
    ),
    key(
        "target.key",
        "array of strings",
        None,
        true,
        "Key columns: the upsert conflict target and the order of keyset pagination. Required for `upsert` and `replace`; a single string is accepted.",
    ),
    key(
        "target.mode",
        "string",
        Some("\"upsert\""),
        false,
        "`upsert` (insert or update by key, unchanged rows untouched), `replace` (delete the window, insert it, one transaction per partition) or `sql` (run `target.sql` once per partition in the target).",
    ),
    key(
        "target.window_column",
        "string",
        None,
        true,
        "`replace` mode: the target column compared with `:start`/`:end` when deleting a window.",
    ),
    key(
        "target.time_format",
        "string",
        None,
        true,
        "`replace` and `sql` modes: how the window is bound in the target; defaults to `source.time_format`.",
    ),
    key(
        "target.sql",
        "string",
        None,
        true,
        "`sql` mode: the statement run in the target for each partition, with `:start` and `:end`.",
    ),
    key(
        "target.guard",
        "string",
        None,
        true,
        "`upsert` mode: a column such as `updated_at` or `version`; a target row whose guard value is newer than the incoming row's is never overwritten, so live writes made during the backfill win.",
    ),
    key(
        "target.pushdown",
        "boolean",
        Some("true"),
        false,
        "When source and target are both SQLite files, SQLite moves each batch itself (`INSERT … SELECT` with the source attached): the same batches, checkpoints and counts, several times faster. `false` moves rows through the engine.",
    ),
    key(
        "scope.start",
        "datetime or string",
        None,
        true,
        "Time scope: inclusive start, RFC 3339 (`2026-03-01T00:00:00Z`), or a date / local datetime read in `timezone`.",
    ),
    key(
        "scope.end",
        "datetime or string",
        None,
        true,
        "Time scope: exclusive end, same forms as `start`.",
    ),
    key(
        "scope.partition",
        "string",
        None,
        true,
        "Time scope: partition size: `15m`, `1h`, `1d`, `1w`, `1mo` (calendar month).",
    ),
    key(
        "scope.timezone",
        "string",
        Some("\"UTC\""),
        false,
        "Time scope: IANA zone for dates without an offset and for calendar steps (days stay midnight to midnight across DST).",
    ),
    key(
        "scope.key",
        "string",
        None,
        true,
        "Key scope: the integer column the windows bound (informational; the query uses `:start`/`:end`).",
    ),
    key(
        "scope.from",
        "integer",
        None,
        true,
        "Key scope: inclusive first key.",
    ),
    key(
        "scope.to",
        "integer",
        None,
        true,
        "Key scope: exclusive end key (`key < to`).",
    ),
    key(
        "scope.chunk",
        "integer",
        None,
        true,
        "Key scope: keys per partition.",
    ),
    key(
        "scope.list",
        "array of tables",
        None,
        true,
        "Explicit windows, e.g. `[{ start = \"2026-03-01T00:00:00Z\", end = \"2026-03-02T00:00:00Z\" }]` or integer bounds.",
    ),
    key(
        "scope.list[].start",
        "datetime, string or integer",
        None,
        false,
        "Inclusive start of one listed window.",
    ),
    key(
        "scope.list[].end",
        "datetime, string or integer",
        None,
        false,
        "Exclusive end of one listed window.",
    ),
    key(
        "limits.concurrency",
        "integer",
        Some("4"),
        false,
        "Partitions processed at the same time.",
    ),
    key(
        "limits.rows_per_second",
        "integer",
        None,
        true,
        "Global cap on rows read per second for the whole run; unlimited when absent.",
    ),
    key(
        "limits.batch_rows",
        "integer",
        Some("5000"),
        false,
        "Rows per batch: one read, one write and one checkpoint.",
    ),
    key(
        "limits.max_attempts",
        "integer",
        Some("6"),
        false,
        "Attempts per partition before it fails, counting the first.",
    ),
    key(
        "limits.retry_base",
        "duration string",
        Some("\"200ms\""),
        false,
        "Backoff scale of the first retry (full jitter, doubling per attempt).",
    ),
    key(
        "limits.retry_cap",
        "duration string",
        Some("\"30s\""),
        false,
        "Longest wait between two attempts.",
    ),
];

/// The keys allowed directly inside the table at `prefix` (`""` for the top level).
pub fn keys_under(prefix: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in SPEC_KEYS {
        let rest = if prefix.is_empty() {
            Some(k.path)
        } else {
            k.path
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('.'))
        };
        if let Some(rest) = rest {
            let head = rest.split(['.', '[']).next().unwrap_or(rest);
            if !out.contains(&head) {
                out.push(head);
            }
        }
    }
    for (section, _) in SECTIONS {
        if prefix.is_empty() && !section.is_empty() && !out.contains(section) {
            out.push(section);
        }
    }
    out
}

/// The closest known key to `unknown`, when one is close enough to be a likely typo.
pub fn suggest(unknown: &str, known: &[&str]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(d, k)| unknown.len() > 2 && *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_owned())
}

/// The reference documentation of the spec, in Markdown, generated from [`SPEC_KEYS`].
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Spec reference\n\n<!-- Generated from crates/backfill-core/src/spec/schema.rs by \
         `cargo run -p backfill-cli -- docs`; do not edit by hand. -->\n\n\
         A spec is a TOML file. Unknown keys are errors. Paths below are `section.key`.\n",
    );
    for (section, about) in SECTIONS {
        let title = if section.is_empty() {
            "top level".to_owned()
        } else {
            format!("[{section}]")
        };
        out.push_str(&format!(
            "\n## {title}\n\n{about}\n\n| key | type | default | meaning |\n|---|---|---|---|\n"
        ));
        for k in SPEC_KEYS {
            let in_section = match k.path.split_once('.') {
                Some((head, _)) => head == *section,
                None => section.is_empty(),
            };
            if !in_section {
                continue;
            }
            let default = match (k.default, k.optional) {
                (Some(d), _) => format!("`{d}`"),
                (None, true) => "not set".to_owned(),
                (None, false) => "required".to_owned(),
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.path, k.kind, default, k.doc
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_section() {
        assert_eq!(keys_under("limits").len(), 6);
        assert!(keys_under("").contains(&"source"));
        assert_eq!(keys_under("scope.list[]"), ["start", "end"]);
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let known = keys_under("scope");
        assert_eq!(suggest("partiton", &known).as_deref(), Some("partition"));
        assert_eq!(suggest("tz", &known), None);
    }
}
