//! The spec parser: walks the spanned TOML document and builds a [`Spec`] or diagnostics.

use std::num::NonZeroU32;
use std::ops::Range;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::schema::{keys_under, suggest};
use super::{
    Limits, ParseContext, Parsed, Probe, SourceSpec, Spec, TargetSpec, ThrottleSpec, WriteMode,
    is_identifier,
};
use crate::breaker::BreakerPolicy;
use crate::budget::{Budget, CostModel};
use crate::diag::{Diagnostic, line_col};
use crate::order::{Order, PriorityRange};
use crate::params::named_params;
use crate::plan::{MAX_PARTITIONS, Scope, Step, Window, estimated_partitions, short_hash};
use crate::retry::RetryPolicy;
use crate::run_window::RunWindow;
use crate::secret::{SecretUrl, redact};
use crate::timefmt::TimeFormat;

/// Schemes this build can connect to.
pub(crate) const SUPPORTED_SCHEMES: &[&str] =
    &["sqlite", "postgres", "postgresql", "mysql", "mariadb"];

/// The time format used when a spec does not set one: text for SQLite (which has no
/// timestamp type), the native timestamp type for PostgreSQL and MySQL.
fn default_time_format(url: Option<&SecretUrl>) -> TimeFormat {
    match url.map(SecretUrl::scheme).as_deref() {
        Some("sqlite") | None => TimeFormat::Rfc3339,
        Some(_) => TimeFormat::Native,
    }
}

struct Walker<'t> {
    text: &'t str,
    diags: Vec<Diagnostic>,
}

type Table<'i> = DeTable<'i>;
type Value<'i> = Spanned<DeValue<'i>>;

impl<'t> Walker<'t> {
    fn error(
        &mut self,
        path: &str,
        span: Option<Range<usize>>,
        msg: impl Into<String>,
    ) -> &mut Diagnostic {
        let d = Diagnostic::error(path, msg);
        self.diags.push(match span {
            Some(span) => d.spanned(self.text, span),
            None => d,
        });
        self.diags.last_mut().expect("just pushed")
    }

    fn warn(
        &mut self,
        path: &str,
        span: Option<Range<usize>>,
        msg: impl Into<String>,
    ) -> &mut Diagnostic {
        let d = Diagnostic::warning(path, msg);
        self.diags.push(match span {
            Some(span) => d.spanned(self.text, span),
            None => d,
        });
        self.diags.last_mut().expect("just pushed")
    }

    /// Reports every key of `table` not declared in the schema under `prefix`.
    fn unknown_keys(&mut self, table: &Table<'_>, prefix: &str) {
        let known = keys_under(prefix);
        for (k, _) in table.iter() {
            let name: &str = k.get_ref();
            if known.contains(&name) {
                continue;
            }
            let path = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}.{name}")
            };
            let path = path.replace("[]", "");
            let hint = match suggest(name, &known) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("known keys here: {}", known.join(", ")),
            };
            self.error(&path, Some(k.span()), format!("unknown key `{name}`"))
                .hint = Some(hint);
        }
    }

    fn section<'a, 'i>(
        &mut self,
        root: &'a Table<'i>,
        name: &str,
        required: bool,
    ) -> Option<&'a Table<'i>> {
        match root.get(name).map(|v| (v.get_ref(), v.span())) {
            Some((DeValue::Table(t), _)) => {
                self.unknown_keys(t, name);
                Some(t)
            }
            Some((_, span)) => {
                self.error(
                    name,
                    Some(span),
                    format!("`{name}` must be a table (`[{name}]`)"),
                );
                None
            }
            None if required => {
                self.error(name, None, format!("missing section `[{name}]`"))
                    .hint = Some(format!("add a `[{name}]` table; see docs/spec.md"));
                None
            }
            None => None,
        }
    }

    fn string(
        &mut self,
        table: &Table<'_>,
        section: &str,
        key: &str,
        required: bool,
    ) -> Option<(String, Range<usize>)> {
        let path = join(section, key);
        match table.get(key) {
            Some(v) => match v.get_ref() {
                DeValue::String(s) => Some((s.to_string(), v.span())),
                other => {
                    self.error(
                        &path,
                        Some(v.span()),
                        format!("expected a string, found {}", kind(other)),
                    );
                    None
                }
            },
            None if required => {
                self.error(&path, None, format!("missing required key `{key}`"));
                None
            }
            None => None,
        }
    }

    fn boolean(&mut self, table: &Table<'_>, section: &str, key: &str, default: bool) -> bool {
        let Some(v) = table.get(key) else {
            return default;
        };
        match v.get_ref() {
            DeValue::Boolean(b) => *b,
            other => {
                let msg = format!("expected true or false, found {}", kind(other));
                self.error(&join(section, key), Some(v.span()), msg);
                default
            }
        }
    }

    fn integer(
        &mut self,
        table: &Table<'_>,
        section: &str,
        key: &str,
    ) -> Option<(i64, Range<usize>)> {
        let v = table.get(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => {
                match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
                    Ok(n) => Some((n, v.span())),
                    Err(_) => {
                        self.error(&join(section, key), Some(v.span()), "integer out of range");
                        None
                    }
                }
            }
            other => {
                self.error(
                    &join(section, key),
                    Some(v.span()),
                    format!("expected an integer, found {}", kind(other)),
                );
                None
            }
        }
    }

    fn positive_u32(
        &mut self,
        table: &Table<'_>,
        section: &str,
        key: &str,
        default: u32,
    ) -> NonZeroU32 {
        let fallback = NonZeroU32::new(default).unwrap_or(NonZeroU32::MIN);
        let Some((n, span)) = self.integer(table, section, key) else {
            return fallback;
        };
        match u32::try_from(n).ok().and_then(NonZeroU32::new) {
            Some(n) => n,
            None => {
                self.error(
                    &join(section, key),
                    Some(span),
                    format!("must be between 1 and {}, found {n}", u32::MAX),
                );
                fallback
            }
        }
    }

    /// A number (TOML float or integer) that must be finite.
    fn float(
        &mut self,
        table: &Table<'_>,
        section: &str,
        key: &str,
    ) -> Option<(f64, Range<usize>)> {
        let v = table.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .ok()
                .map(|n| n as f64),
            other => {
                self.error(
                    &join(section, key),
                    Some(v.span()),
                    format!("expected a number, found {}", kind(other)),
                );
                return None;
            }
        };
        match parsed.filter(|f| f.is_finite()) {
            Some(f) => Some((f, v.span())),
            None => {
                self.error(
                    &join(section, key),
                    Some(v.span()),
                    "expected a finite number",
                );
                None
            }
        }
    }

    /// A number in `range` (or `default` when absent); `what` describes the range for the
    /// message.
    fn fraction(
        &mut self,
        table: &Table<'_>,
        section: &str,
        key: &str,
        default: f64,
        ok: impl Fn(f64) -> bool,
        what: &str,
    ) -> f64 {
        let Some((f, span)) = self.float(table, section, key) else {
            return default;
        };
        if ok(f) {
            f
        } else {
            self.error(
                &join(section, key),
                Some(span),
                format!("must be {what}, found {f}"),
            );
            default
        }
    }

    /// A positive whole number that fits in a u64, when present.
    fn positive_u64(&mut self, table: &Table<'_>, section: &str, key: &str) -> Option<u64> {
        let (n, span) = self.integer(table, section, key)?;
        match u64::try_from(n) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.error(
                    &join(section, key),
                    Some(span),
                    format!("must be positive, found {n}"),
                );
                None
            }
        }
    }

    /// A duration string, when present and valid.
    fn opt_duration(
        &mut self,
        table: &Table<'_>,
        section: &str,
        key: &str,
    ) -> Option<(Duration, Range<usize>)> {
        let (s, span) = self.string(table, section, key, false)?;
        match humantime::parse_duration(&s) {
            Ok(d) => Some((d, span)),
            Err(e) => {
                self.error(
                    &join(section, key),
                    Some(span),
                    format!("invalid duration `{s}`: {e}"),
                )
                .hint = Some("write e.g. `200ms`, `5s`, `2m`, `6h`".to_owned());
                None
            }
        }
    }

    /// The table at `key` of `table` (inline `{ … }` or `[section.key]`), with its unknown
    /// keys reported; an error when `key` holds something else.
    fn subtable<'a, 'i>(
        &mut self,
        table: &'a Table<'i>,
        section: &str,
        key: &str,
        hint: &str,
    ) -> Option<&'a Table<'i>> {
        let v = table.get(key)?;
        let path = join(section, key);
        match v.get_ref() {
            DeValue::Table(t) => {
                self.unknown_keys(t, &path);
                Some(t)
            }
            other => {
                self.error(
                    &path,
                    Some(v.span()),
                    format!("expected a table, found {}", kind(other)),
                )
                .hint = Some(hint.to_owned());
                None
            }
        }
    }

    fn url(
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

    fn instant(&mut self, v: &Value<'_>, path: &str, tz: Tz) -> Option<DateTime<Utc>> {
        let text = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Datetime(d) => d.to_string(),
            other => {
                self.error(
                    path,
                    Some(v.span()),
                    format!("expected a date-time, found {}", kind(other)),
                );
                return None;
            }
        };
        match parse_instant(&text, tz) {
            Some(t) => Some(t),
            None => {
                self.error(path, Some(v.span()), format!("`{text}` is not a date-time"))
                    .hint = Some("use RFC 3339 (`2026-03-01T00:00:00Z`), a date (`2026-03-01`) or a local date-time read in `scope.timezone`".to_owned());
                None
            }
        }
    }
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
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

/// Parses an instant: RFC 3339 with offset; otherwise a local date or date-time in `tz`.
pub(crate) fn parse_instant(s: &str, tz: Tz) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

pub(super) fn parse(text: &str, ctx: &ParseContext<'_>) -> Parsed {
    let mut w = Walker {
        text,
        diags: Vec::new(),
    };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let message = e.message().trim().to_owned();
            let d = Diagnostic::error("", format!("invalid TOML: {message}"));
            w.diags.push(match e.span() {
                Some(span) => d.spanned(text, span),
                None => d,
            });
            return Parsed {
                spec: None,
                diagnostics: w.diags,
                positions: Default::default(),
                spans: Default::default(),
            };
        }
    };
    let root = doc.get_ref();
    w.unknown_keys(root, "");

    let name = w.string(root, "", "name", true).and_then(|(name, span)| {
        let ok = !name.is_empty()
            && name.len() <= 100
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Some(name)
        } else {
            w.error("name", Some(span), format!("invalid name `{name}`"))
                .hint = Some("use letters, digits, `_` and `-` (at most 100)".to_owned());
            None
        }
    });
    let reason = w
        .string(root, "", "reason", false)
        .map(|(r, _)| r)
        .filter(|r| !r.trim().is_empty());

    // `sql` mode runs its own statement: `[source]` is optional there (estimates only).
    let sql_mode = is_sql_mode(root);
    let source_table = w.section(root, "source", false);
    if source_table.is_none() && root.get("source").is_none() && !sql_mode {
        w.error("source", None, "missing section `[source]`").hint = Some(
            "add a `[source]` table with the `url` and `query` rows are read from (only `sql` \
             mode, which runs its own statement, can do without); see docs/spec.md"
                .to_owned(),
        );
    }
    let source = source_table.and_then(|t| source_spec(&mut w, t, ctx));
    let target_table = w.section(root, "target", true);
    let scope_table = w.section(root, "scope", true);
    let scope = scope_table.and_then(|t| scope(&mut w, t));
    let limits = match w.section(root, "limits", false) {
        Some(t) => limits(&mut w, t, scope.as_ref()),
        None => Limits::default(),
    };
    let throttle = w
        .section(root, "throttle", false)
        .and_then(|t| throttle(&mut w, t, ctx, &limits));
    let source_format = source
        .as_ref()
        .map_or(TimeFormat::Rfc3339, |s| s.time_format.clone());
    let target = target_table.and_then(|t| target_spec(&mut w, t, ctx, &source_format));

    // Cross-field rules.
    if sql_mode && source_table.is_none() {
        needs_source(&mut w, root, &limits);
    }
    if let (Some(src), Some(scope)) = (&source, &scope) {
        let needs_window = !matches!(scope, Scope::List(v) if v.is_empty());
        let params = named_params(&src.query);
        let span = source_table_span(root, "query");
        for p in ["start", "end"] {
            if needs_window && !params.iter().any(|n| n == p) {
                w.error("source.query", span.clone(), format!("the query does not use `:{p}`"))
                    .hint = Some("filter the window with bound parameters, e.g. `WHERE ts >= :start AND ts < :end`".to_owned());
            }
        }
        for p in &params {
            if p != "start" && p != "end" {
                w.error(
                    "source.query",
                    span.clone(),
                    format!("unknown parameter `:{p}`"),
                )
                .hint = Some("only `:start` and `:end` are bound".to_owned());
            }
        }
    }

    let mut positions = std::collections::BTreeMap::new();
    let mut spans = std::collections::BTreeMap::new();
    collect_positions(root, "", text, &mut positions, &mut spans);
    let mut parsed = Parsed {
        spec: None,
        diagnostics: Vec::new(),
        positions,
        spans,
    };
    for d in &mut w.diags {
        if d.position.is_none() && !d.path.is_empty() {
            d.position = parsed.position_of(&d.path);
            d.span = parsed.span_of(&d.path);
        }
    }
    w.diags
        .sort_by_key(|d| (d.position.unwrap_or((usize::MAX, 0)), d.path.clone()));
    let has_error = w.diags.iter().any(Diagnostic::is_error);
    let source_ok = source.is_some() || (sql_mode && source_table.is_none());
    let spec = match (name, source_ok, target, scope, has_error) {
        (Some(name), true, Some(target), Some(scope), false) => Some(Spec {
            name,
            reason,
            source,
            target,
            scope,
            limits,
            throttle,
            redacted_text: redact(text),
            spec_hash: short_hash(&[text]),
        }),
        _ => None,
    };
    parsed.spec = spec;
    parsed.diagnostics = w.diags;
    parsed
}

/// Whether the file says `target.mode = "sql"`, read before `[target]` is validated.
fn is_sql_mode(root: &Table<'_>) -> bool {
    let Some(DeValue::Table(target)) = root.get("target").map(|t| t.get_ref()) else {
        return false;
    };
    matches!(target.get("mode").map(|m| m.get_ref()), Some(DeValue::String(m)) if m == "sql")
}

/// In `sql` mode without `[source]`, the limits that count a window's rows in the source are
/// errors: there is nothing to count.
fn needs_source(w: &mut Walker<'_>, root: &Table<'_>, limits: &Limits) {
    let span = |key: &str| match root.get("limits").map(|l| l.get_ref()) {
        Some(DeValue::Table(t)) => t.get(key).map(|v| v.span()),
        _ => None,
    };
    let hint = "add a `[source]` whose `query` selects the rows of a window (`:start`, `:end`): \
                in `sql` mode it is only used to count them";
    if limits.split.rows.is_some() {
        w.error(
            "limits.split_rows",
            span("split_rows"),
            "`split_rows` needs `[source]`: it counts each partition's rows in the source",
        )
        .hint = Some(hint.to_owned());
    }
    if limits.order == Order::LargestFirst {
        w.error(
            "limits.order",
            span("order"),
            "`largest_first` needs `[source]`: it counts each partition's rows in the source",
        )
        .hint = Some(hint.to_owned());
    }
}

/// Records the position and span of every value (and table header) under `table`, by dotted
/// path.
fn collect_positions(
    table: &Table<'_>,
    prefix: &str,
    text: &str,
    out: &mut std::collections::BTreeMap<String, (usize, usize)>,
    spans: &mut std::collections::BTreeMap<String, Range<usize>>,
) {
    for (k, v) in table.iter() {
        let name: &str = k.get_ref();
        let path = join(prefix, name);
        // Values are where problems are; a table is found by its header.
        if let DeValue::Table(inner) = v.get_ref() {
            out.insert(path.clone(), line_col(text, k.span().start));
            spans.insert(path.clone(), k.span());
            collect_positions(inner, &path, text, out, spans);
        } else {
            out.insert(path.clone(), line_col(text, v.span().start));
            spans.insert(path, v.span());
        }
    }
}

fn source_table_span(root: &Table<'_>, key: &str) -> Option<Range<usize>> {
    match root.get("source")?.get_ref() {
        DeValue::Table(t) => t.get(key).map(|v| v.span()),
        _ => None,
    }
}

fn time_format(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    section: &str,
    default: &TimeFormat,
) -> Option<TimeFormat> {
    match w.string(t, section, "time_format", false) {
        None => Some(default.clone()),
        Some((s, span)) => match TimeFormat::parse(&s) {
            Some(f) => Some(f),
            None => {
                w.error(&join(section, "time_format"), Some(span), format!("unknown time format `{s}`"))
                    .hint = Some("use `rfc3339`, `unix`, `unix_ms` or a strftime pattern such as `%Y-%m-%d %H:%M:%S`".to_owned());
                None
            }
        },
    }
}

fn identifier(
    w: &mut Walker<'_>,
    value: Option<(String, Range<usize>)>,
    path: &str,
) -> Option<String> {
    let (s, span) = value?;
    if is_identifier(&s) {
        Some(s)
    } else {
        w.error(path, Some(span), format!("`{s}` is not a valid identifier"))
            .hint = Some(
            "use letters, digits and `_` (optionally `schema.table`); quoting is done for you"
                .to_owned(),
        );
        None
    }
}

fn source_spec(w: &mut Walker<'_>, t: &Table<'_>, ctx: &ParseContext<'_>) -> Option<SourceSpec> {
    let url = w.url(t, "source", ctx);
    let query = w.string(t, "source", "query", true).and_then(|(q, span)| {
        if q.trim().is_empty() {
            w.error("source.query", Some(span), "the query is empty");
            None
        } else {
            Some(q)
        }
    });
    let time_format = time_format(w, t, "source", &default_time_format(url.as_ref()));
    let time_column_raw = w.string(t, "source", "time_column", false);
    let had_column = time_column_raw.is_some();
    let time_column = identifier(w, time_column_raw, "source.time_column");
    if had_column && time_column.is_none() {
        return None;
    }
    Some(SourceSpec {
        url: url?,
        query: query?,
        time_format: time_format?,
        time_column,
    })
}

fn target_spec(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    ctx: &ParseContext<'_>,
    source_format: &TimeFormat,
) -> Option<TargetSpec> {
    let url = w.url(t, "target", ctx);
    let mode_raw = w.string(t, "target", "mode", false);
    let mode_name = mode_raw
        .as_ref()
        .map_or("upsert".to_owned(), |(m, _)| m.clone());
    let table_raw = w.string(t, "target", "table", false);
    let table_span = table_raw.as_ref().map(|(_, s)| s.clone());
    let table = identifier(w, table_raw, "target.table");
    let key = key_list(w, t);
    let default_format = match (default_time_format(url.as_ref()), source_format) {
        // A SQLite target compares text: keep the source's text format, or RFC 3339 when
        // the source binds natively.
        (TimeFormat::Rfc3339, TimeFormat::Native) => TimeFormat::Rfc3339,
        (TimeFormat::Rfc3339, other) => other.clone(),
        (native, _) => native,
    };
    let time_format = time_format(w, t, "target", &default_format);
    let guard_raw = w.string(t, "target", "guard", false);
    let guard_span = guard_raw.as_ref().map(|(_, s)| s.clone());
    let guard = identifier(w, guard_raw, "target.guard");
    let window_column_raw = w.string(t, "target", "window_column", false);
    let window_column = identifier(w, window_column_raw, "target.window_column");
    let sql = w.string(t, "target", "sql", false);

    let needs_table_and_key = |w: &mut Walker<'_>, mode: &str| {
        if table.is_none() && table_span.is_none() {
            w.error("target.table", None, format!("`{mode}` mode needs `table`"));
        }
        if key.as_ref().is_some_and(|k| k.is_empty()) {
            w.error(
                "target.key",
                None,
                format!("`{mode}` mode needs `key`, the key columns"),
            )
            .hint = Some(
                "e.g. `key = [\"id\"]`; the source query must return these columns".to_owned(),
            );
        }
    };
    let mode = match mode_name.as_str() {
        "upsert" => {
            needs_table_and_key(w, "upsert");
            Some(WriteMode::Upsert)
        }
        "replace" => {
            needs_table_and_key(w, "replace");
            match window_column {
                Some(c) => Some(WriteMode::Replace { window_column: c }),
                None => {
                    w.error(
                        "target.window_column",
                        None,
                        "`replace` mode needs `window_column`",
                    )
                    .hint = Some(
                        "the target column compared with `:start`/`:end` when deleting a window"
                            .to_owned(),
                    );
                    None
                }
            }
        }
        "sql" => match sql {
            Some((statement, span)) => {
                let params = named_params(&statement);
                for p in ["start", "end"] {
                    if !params.iter().any(|n| n == p) {
                        w.error(
                            "target.sql",
                            Some(span.clone()),
                            format!("the statement does not use `:{p}`"),
                        )
                        .hint = Some(
                            "without the window each partition would redo the whole table"
                                .to_owned(),
                        );
                    }
                }
                Some(WriteMode::Sql { statement })
            }
            None => {
                w.error(
                    "target.sql",
                    None,
                    "`sql` mode needs `sql`, the statement run per partition",
                );
                None
            }
        },
        other => {
            let span = mode_raw.map(|(_, s)| s);
            let hint = match suggest(other, &["upsert", "replace", "sql"]) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "use `upsert`, `replace` or `sql`".to_owned(),
            };
            w.error("target.mode", span, format!("unknown write mode `{other}`"))
                .hint = Some(hint);
            None
        }
    };
    let pushdown = w.boolean(t, "target", "pushdown", true);
    if guard.is_some() && !matches!(mode, Some(WriteMode::Upsert)) {
        w.error(
            "target.guard",
            guard_span,
            "`guard` only applies to `upsert` mode",
        )
        .hint = Some("replace and sql modes rewrite the window as a whole".to_owned());
    }
    Some(TargetSpec {
        guard,
        url: url?,
        table,
        key: key?,
        mode: mode?,
        time_format: time_format?,
        pushdown,
    })
}

fn key_list(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Vec<String>> {
    let Some(v) = t.get("key") else {
        return Some(Vec::new());
    };
    let items: Vec<(String, Range<usize>)> = match v.get_ref() {
        DeValue::String(s) => vec![(s.to_string(), v.span())],
        DeValue::Array(items) => {
            let mut out = Vec::new();
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push((s.to_string(), item.span())),
                    other => {
                        w.error(
                            "target.key",
                            Some(item.span()),
                            format!("expected a column name, found {}", kind(other)),
                        );
                        return None;
                    }
                }
            }
            out
        }
        other => {
            w.error(
                "target.key",
                Some(v.span()),
                format!("expected an array of column names, found {}", kind(other)),
            );
            return None;
        }
    };
    if items.is_empty() {
        w.error("target.key", Some(v.span()), "the key list is empty")
            .hint = Some("e.g. `key = [\"id\"]`".to_owned());
        return None;
    }
    let mut out = Vec::new();
    for item in items {
        if out.contains(&item.0) {
            w.error(
                "target.key",
                Some(item.1.clone()),
                format!("column `{}` is listed twice", item.0),
            );
            return None;
        }
        out.push(identifier(w, Some(item), "target.key")?);
    }
    Some(out)
}

fn scope(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Scope> {
    let has = |k: &str| t.get(k).is_some();
    let time = has("start") || has("end") || has("partition");
    let key = has("from") || has("to") || has("chunk") || has("key");
    let list = has("list");
    match (time, key, list) {
        (true, false, false) => time_scope(w, t),
        (false, true, false) => key_scope(w, t),
        (false, false, true) => list_scope(w, t),
        (false, false, false) => {
            w.error("scope", None, "the scope is empty")
                .hint = Some("set `start`, `end` and `partition` (time), `from`, `to` and `chunk` (keys), or `list`".to_owned());
            None
        }
        _ => {
            w.error("scope", None, "the scope mixes kinds")
                .hint = Some("use exactly one of: time (`start`/`end`/`partition`), keys (`from`/`to`/`chunk`), or `list`".to_owned());
            None
        }
    }
}

fn timezone(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Tz> {
    match w.string(t, "scope", "timezone", false) {
        None => Some(Tz::UTC),
        Some((s, span)) => match s.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                w.error(
                    "scope.timezone",
                    Some(span),
                    format!("unknown time zone `{s}`"),
                )
                .hint = Some(match suggest_zone(&s) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => "use an IANA name such as `UTC`, `Europe/Berlin` or \
                             `America/New_York`"
                        .to_owned(),
                });
                None
            }
        },
    }
}

/// The IANA zone closest to `name`: the same name in other case (`europe/berlin`), or a typo
/// away from one (`Europe/Berln`).
fn suggest_zone(name: &str) -> Option<String> {
    let names: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(name))
        .map(|n| (*n).to_owned())
        .or_else(|| suggest(name, &names))
}

fn time_scope(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Scope> {
    let tz = timezone(w, t);
    let zone = tz.unwrap_or(Tz::UTC);
    let get = |w: &mut Walker<'_>, k: &str| match t.get(k) {
        Some(v) => w.instant(v, &join("scope", k), zone).map(|i| (i, v.span())),
        None => {
            w.error(&join("scope", k), None, format!("a time scope needs `{k}`"));
            None
        }
    };
    let start = get(w, "start");
    let end = get(w, "end");
    let mut step_span = None;
    let step = match w.string(t, "scope", "partition", false) {
        Some((s, span)) => match Step::parse(&s) {
            Ok(step) => {
                step_span = Some(span);
                Some(step)
            }
            Err(msg) => {
                w.error(
                    "scope.partition",
                    Some(span),
                    format!("invalid partition size: {msg}"),
                )
                .hint = Some("e.g. `15m`, `1h`, `1d`, `1mo`".to_owned());
                None
            }
        },
        None => {
            w.error(
                "scope.partition",
                None,
                "a time scope needs `partition`, the partition size",
            )
            .hint = Some("e.g. `partition = \"1h\"`".to_owned());
            None
        }
    };
    let ((start, _), (end, end_span)) = (start?, end?);
    if start >= end {
        w.error(
            "scope.end",
            Some(end_span),
            format!("end ({end}) must be after start ({start})"),
        )
        .hint = Some("the scope is the half-open range [start, end)".to_owned());
        return None;
    }
    let scope = Scope::Time {
        start,
        end,
        step: step?,
        timezone: tz?,
    };
    within_cap(w, scope, "scope.partition", step_span)
}

/// Refuses a scope that makes more partitions than a plan may hold, before planning it (the
/// estimate takes constant time; planning a scope of a billion seconds would not), naming the
/// field that sets the partition size and the count.
fn within_cap(
    w: &mut Walker<'_>,
    scope: Scope,
    path: &str,
    span: Option<Range<usize>>,
) -> Option<Scope> {
    let n = estimated_partitions(&scope);
    if n <= MAX_PARTITIONS as u64 {
        return Some(scope);
    }
    w.error(
        path,
        span,
        format!(
            "the scope makes about {n} partitions, more than the {MAX_PARTITIONS} a plan may hold"
        ),
    )
    .hint = Some("use a larger partition size, or split the scope into several specs".to_owned());
    None
}

fn key_scope(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Scope> {
    let _ = w.string(t, "scope", "key", false);
    let need = |w: &mut Walker<'_>, k: &str| {
        let v = w.integer(t, "scope", k);
        if v.is_none() && t.get(k).is_none() {
            w.error(&join("scope", k), None, format!("a key scope needs `{k}`"));
        }
        v
    };
    let from = need(w, "from");
    let to = need(w, "to");
    let chunk = need(w, "chunk");
    let ((from, _), (to, to_span), (chunk, chunk_span)) = (from?, to?, chunk?);
    let mut ok = true;
    if chunk <= 0 {
        w.error(
            "scope.chunk",
            Some(chunk_span.clone()),
            format!("chunk must be positive, found {chunk}"),
        );
        ok = false;
    }
    if from >= to {
        w.error(
            "scope.to",
            Some(to_span),
            format!("to ({to}) must be greater than from ({from})"),
        )
        .hint = Some("the scope is the half-open range [from, to)".to_owned());
        ok = false;
    }
    if !ok {
        return None;
    }
    let scope = Scope::Key {
        from,
        to,
        chunk: chunk.unsigned_abs(),
    };
    within_cap(w, scope, "scope.chunk", Some(chunk_span))
}

fn list_scope(w: &mut Walker<'_>, t: &Table<'_>) -> Option<Scope> {
    let tz = timezone(w, t).unwrap_or(Tz::UTC);
    let v = t.get("list")?;
    let DeValue::Array(items) = v.get_ref() else {
        w.error(
            "scope.list",
            Some(v.span()),
            format!("expected an array of windows, found {}", kind(v.get_ref())),
        );
        return None;
    };
    let mut windows = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("scope.list[{i}]");
        let DeValue::Table(entry) = item.get_ref() else {
            w.error(
                &path,
                Some(item.span()),
                "expected `{ start = …, end = … }`",
            );
            ok = false;
            continue;
        };
        w.unknown_keys(entry, "scope.list[]");
        let (Some(s), Some(e)) = (entry.get("start"), entry.get("end")) else {
            w.error(
                &path,
                Some(item.span()),
                "a listed window needs `start` and `end`",
            );
            ok = false;
            continue;
        };
        let window = match (s.get_ref(), e.get_ref()) {
            (DeValue::Integer(_), DeValue::Integer(_)) => {
                match (
                    w.integer(entry, &path, "start"),
                    w.integer(entry, &path, "end"),
                ) {
                    (Some((a, _)), Some((b, _))) => Some(Window::Key { start: a, end: b }),
                    _ => None,
                }
            }
            _ => match (
                w.instant(s, &format!("{path}.start"), tz),
                w.instant(e, &format!("{path}.end"), tz),
            ) {
                (Some(a), Some(b)) => Some(Window::Time { start: a, end: b }),
                _ => None,
            },
        };
        match window {
            Some(win) if win.is_empty() => {
                w.error(&path, Some(item.span()), "end must be after start");
                ok = false;
            }
            Some(win) => windows.push(win),
            None => ok = false,
        }
    }
    let time = windows
        .iter()
        .filter(|w| matches!(w, Window::Time { .. }))
        .count();
    if time != 0 && time != windows.len() {
        w.error(
            "scope.list",
            Some(v.span()),
            "the list mixes time and key windows",
        );
        return None;
    }
    if windows.is_empty() && ok {
        w.error("scope.list", Some(v.span()), "the list is empty");
        return None;
    }
    if let Err(e) = crate::plan::partitions(&Scope::List(windows.clone())) {
        w.error("scope.list", Some(v.span()), e.to_string());
        return None;
    }
    ok.then_some(Scope::List(windows))
}

/// The largest `limits.batch_rows`: connectors reserve memory for a whole batch up front.
const MAX_BATCH_ROWS: u32 = 10_000_000;

fn limits(w: &mut Walker<'_>, t: &Table<'_>, scope: Option<&Scope>) -> Limits {
    let d = Limits::default();
    let concurrency = w.positive_u32(t, "limits", "concurrency", d.concurrency.get());
    let batch_rows = w.positive_u32(t, "limits", "batch_rows", d.batch_rows.get());
    let rows_per_second = t
        .get("rows_per_second")
        .map(|_| w.positive_u32(t, "limits", "rows_per_second", u32::MAX));
    let batches_per_second = t
        .get("batches_per_second")
        .map(|_| w.positive_u32(t, "limits", "batches_per_second", u32::MAX));
    let max_attempts = w.positive_u32(t, "limits", "max_attempts", d.retry.max_attempts);
    let base = retry_delay(w, t, "retry_base", d.retry.base);
    let cap = retry_delay(w, t, "retry_cap", d.retry.cap);
    if concurrency.get() > 1024 {
        w.error(
            "limits.concurrency",
            t.get("concurrency").map(|v| v.span()),
            "at most 1024",
        );
    }
    if batch_rows.get() > MAX_BATCH_ROWS {
        w.error(
            "limits.batch_rows",
            t.get("batch_rows").map(|v| v.span()),
            format!("at most {MAX_BATCH_ROWS} rows, found {batch_rows}"),
        )
        .hint = Some("a batch is held in memory; e.g. `batch_rows = 5_000`".to_owned());
    } else if batch_rows.get() > 1_000_000 {
        w.warn(
            "limits.batch_rows",
            t.get("batch_rows").map(|v| v.span()),
            "batches over 1,000,000 rows use a lot of memory",
        );
    }
    let budget = budget(w, t);
    let window = w
        .string(t, "limits", "window", false)
        .and_then(|(text, span)| match RunWindow::parse(&text) {
            Ok(window) => Some(window),
            Err(msg) => {
                w.error(
                    "limits.window",
                    Some(span),
                    format!("invalid window: {msg}"),
                )
                .hint = Some(
                    "e.g. `window = \"22:00-06:00\"` or `\"22:00-06:00 Europe/Paris\"` (UTC \
                     when no zone is given)"
                        .to_owned(),
                );
                None
            }
        });
    let order = order(w, t, scope).unwrap_or_default();
    let breaker = breaker(w, t);
    let split = crate::split::SplitPolicy {
        rows: w.positive_u64(t, "limits", "split_rows"),
        slow_factor: t.get("split_slow").map(|_| {
            w.fraction(
                t,
                "limits",
                "split_slow",
                4.0,
                |f| (1.5..=1000.0).contains(&f),
                "between 1.5 and 1000 (times the median partition time)",
            )
        }),
    };
    Limits {
        concurrency,
        rows_per_second,
        batches_per_second,
        batch_rows,
        retry: RetryPolicy {
            base,
            cap: cap.max(base),
            max_attempts: max_attempts.get(),
        },
        budget,
        window,
        order,
        breaker,
        split,
    }
}

/// `limits.retry_base` / `limits.retry_cap`: at most a day, so a retry's backoff
/// (`base × 2^n`, capped, times a random fraction) always fits a `Duration` and a partition is
/// never parked for ages by a typo.
fn retry_delay(w: &mut Walker<'_>, t: &Table<'_>, key: &str, default: Duration) -> Duration {
    const MAX: Duration = Duration::from_secs(24 * 3600);
    match w.opt_duration(t, "limits", key) {
        None => default,
        Some((d, _)) if d <= MAX => d,
        Some((d, span)) => {
            w.error(
                &join("limits", key),
                Some(span),
                format!(
                    "must be at most 24h, found {}",
                    humantime::format_duration(d)
                ),
            )
            .hint = Some("retries back off exponentially up to `retry_cap`; e.g. `1m`".to_owned());
            default
        }
    }
}

fn budget(w: &mut Walker<'_>, limits: &Table<'_>) -> Budget {
    const SECTION: &str = "limits.budget";
    let Some(t) = w.subtable(
        limits,
        "limits",
        "budget",
        "e.g. `budget = { rows = 100_000_000, duration = \"6h\" }`",
    ) else {
        return Budget::default();
    };
    let rows = w.positive_u64(t, SECTION, "rows");
    let partitions = w.positive_u64(t, SECTION, "partitions");
    let duration = w
        .opt_duration(t, SECTION, "duration")
        .and_then(|(d, span)| {
            if d.is_zero() {
                w.error(
                    "limits.budget.duration",
                    Some(span),
                    "must be longer than zero",
                );
                None
            } else {
                Some(d)
            }
        });
    let cost = w
        .subtable(
            t,
            SECTION,
            "cost",
            "e.g. `cost = { per_million_rows = 0.40, per_hour = 2.0, currency = \"USD\", max = 50.0 }`",
        )
        .map(|c| cost_model(w, c));
    Budget {
        rows,
        duration,
        partitions,
        cost,
    }
}

fn cost_model(w: &mut Walker<'_>, t: &Table<'_>) -> CostModel {
    const SECTION: &str = "limits.budget.cost";
    let problems_before = w.diags.len();
    let price = |w: &mut Walker<'_>, key: &str| {
        w.fraction(t, SECTION, key, 0.0, |f| f >= 0.0, "zero or more")
    };
    let per_million_rows = price(w, "per_million_rows");
    let per_hour = price(w, "per_hour");
    let currency = match w.string(t, SECTION, "currency", false) {
        None => "USD".to_owned(),
        Some((c, span)) => {
            let ok =
                !c.trim().is_empty() && c.chars().count() <= 16 && !c.chars().any(char::is_control);
            if !ok {
                w.error(
                    "limits.budget.cost.currency",
                    Some(span),
                    format!("invalid currency `{c}`"),
                )
                .hint = Some("a code such as `USD` or `EUR` (at most 16 characters)".to_owned());
            }
            c.trim().to_owned()
        }
    };
    let max = w.float(t, SECTION, "max").and_then(|(m, span)| {
        if m > 0.0 {
            Some(m)
        } else {
            w.error(
                "limits.budget.cost.max",
                Some(span),
                format!("must be positive, found {m}"),
            );
            None
        }
    });
    if per_million_rows == 0.0 && per_hour == 0.0 && w.diags.len() == problems_before {
        w.warn(SECTION, None, "the cost is always zero").hint =
            Some("set `per_million_rows` and/or `per_hour`".to_owned());
    }
    CostModel {
        per_million_rows,
        per_hour,
        currency,
        max,
    }
}

/// `limits.order`: a name, or a priority list of windows read in the scope's zone. A priority
/// item of the other kind than the scope is an error; one that covers no partition of the
/// scope is a warning.
fn order(w: &mut Walker<'_>, t: &Table<'_>, scope: Option<&Scope>) -> Option<Order> {
    let v = t.get("order")?;
    let names = "`oldest_first`, `newest_first`, `largest_first`, or a priority list such as \
                 `[\"2025-12-24\", \"2025-12-20..2025-12-23\"]`";
    let items = match v.get_ref() {
        DeValue::String(s) => {
            return match Order::parse_name(s) {
                Ok(order) => Some(order),
                Err(msg) => {
                    let known = ["oldest_first", "newest_first", "largest_first"];
                    let close = suggest(s, &known).or_else(|| {
                        known
                            .iter()
                            .find(|k| !s.is_empty() && k.starts_with(&**s))
                            .map(|k| (*k).to_owned())
                    });
                    let hint = match close {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("use {names}"),
                    };
                    w.error("limits.order", Some(v.span()), msg).hint = Some(hint);
                    None
                }
            };
        }
        DeValue::Array(items) => items,
        other => {
            w.error(
                "limits.order",
                Some(v.span()),
                format!(
                    "expected a string or an array of windows, found {}",
                    kind(other)
                ),
            )
            .hint = Some(format!("use {names}"));
            return None;
        }
    };
    if items.is_empty() {
        w.error("limits.order", Some(v.span()), "the priority list is empty")
            .hint = Some(format!("use {names}"));
        return None;
    }
    let tz = match scope {
        Some(Scope::Time { timezone, .. }) => *timezone,
        _ => Tz::UTC,
    };
    let mut ranges = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("limits.order[{i}]");
        let DeValue::String(text) = item.get_ref() else {
            w.error(
                &path,
                Some(item.span()),
                format!("expected a window string, found {}", kind(item.get_ref())),
            )
            .hint = Some(
                "e.g. `\"2025-12-24\"`, `\"2025-12-20..2025-12-23\"` or `\"1000..2000\"`"
                    .to_owned(),
            );
            ok = false;
            continue;
        };
        let range = match PriorityRange::parse(text, tz) {
            Ok(r) => r,
            Err(msg) => {
                w.error(&path, Some(item.span()), msg)
                    .hint = Some("a date, an RFC 3339 instant, `START..END` of those, or a key range `1000..2000`".to_owned());
                ok = false;
                continue;
            }
        };
        if let Some(scope) = scope {
            let scope_is_time = match scope {
                Scope::Time { .. } => true,
                Scope::Key { .. } => false,
                Scope::List(list) => list.iter().any(|w| matches!(w, Window::Time { .. })),
            };
            let range_is_time = matches!(range.window, Window::Time { .. });
            let covered = match scope {
                Scope::Time { start, end, .. } => range.overlaps(&Window::Time {
                    start: *start,
                    end: *end,
                }),
                Scope::Key { from, to, .. } => range.overlaps(&Window::Key {
                    start: *from,
                    end: *to,
                }),
                Scope::List(list) => list.iter().any(|win| range.overlaps(win)),
            };
            if scope_is_time != range_is_time {
                let (is, scope_kind) = if range_is_time {
                    ("a time", "key")
                } else {
                    ("a key", "time")
                };
                w.error(
                    &path,
                    Some(item.span()),
                    format!("`{text}` is {is} window but the scope is a {scope_kind} scope"),
                )
                .hint = Some(if scope_is_time {
                    "use dates or instants, e.g. `2025-12-24` or `2025-12-20..2025-12-23`"
                        .to_owned()
                } else {
                    "use keys, e.g. `1000..2000`".to_owned()
                });
                ok = false;
                continue;
            }
            if !covered {
                w.warn(
                    &path,
                    Some(item.span()),
                    format!("`{text}` covers no partition of the scope"),
                )
                .hint = Some("it has no effect; compare it with `[scope]`".to_owned());
            }
        }
        ranges.push(range);
    }
    ok.then_some(Order::Priority(ranges))
}

fn breaker(w: &mut Walker<'_>, limits: &Table<'_>) -> BreakerPolicy {
    const SECTION: &str = "limits.circuit_breaker";
    let d = BreakerPolicy::default();
    if let Some(v) = limits.get("circuit_breaker")
        && let DeValue::Boolean(on) = v.get_ref()
    {
        if *on {
            return d;
        }
        return BreakerPolicy {
            enabled: false,
            ..d
        };
    }
    let Some(t) = w.subtable(
        limits,
        "limits",
        "circuit_breaker",
        "e.g. `circuit_breaker = { window = 50, max_error_rate = 0.2 }`, or `false` to turn it off",
    ) else {
        return d;
    };
    let enabled = w.boolean(t, SECTION, "enabled", true);
    let window = w.positive_u32(t, SECTION, "window", d.window);
    if window.get() > 100_000 {
        w.error(
            "limits.circuit_breaker.window",
            t.get("window").map(|v| v.span()),
            "at most 100000 batches",
        );
    }
    let max_error_rate = w.fraction(
        t,
        SECTION,
        "max_error_rate",
        d.max_error_rate,
        |f| (0.0..1.0).contains(&f),
        "at least 0 and below 1",
    );
    BreakerPolicy {
        enabled,
        window: window.get().min(100_000),
        max_error_rate,
    }
}

fn throttle(
    w: &mut Walker<'_>,
    t: &Table<'_>,
    ctx: &ParseContext<'_>,
    limits: &Limits,
) -> Option<ThrottleSpec> {
    const SECTION: &str = "throttle";
    let d = ThrottleSpec::default();
    let problems_before = w.diags.iter().filter(|d| d.is_error()).count();
    let probe = w
        .subtable(
            t,
            SECTION,
            "probe",
            "e.g. `probe = { url = \"postgres://app@db/shop\", sql = \"SELECT 1\" }`",
        )
        .map(|p| {
            let url = w.url(p, "throttle.probe", ctx);
            let sql = w
                .string(p, "throttle.probe", "sql", true)
                .and_then(|(sql, span)| {
                    if sql.trim().is_empty() {
                        w.error(
                            "throttle.probe.sql",
                            Some(span),
                            "the probe statement is empty",
                        )
                        .hint = Some(
                            "e.g. `sql = \"SELECT 1\"`, or a cheap query live traffic runs"
                                .to_owned(),
                        );
                        None
                    } else {
                        Some(sql)
                    }
                });
            (url, sql)
        });
    let watch = w
        .subtable(
            t,
            SECTION,
            "watch",
            "e.g. `watch = { url = \"postgres://app@db/shop\" }`",
        )
        .map(|p| {
            let url = w.url(p, "throttle.watch", ctx)?;
            if url.scheme() == "sqlite" {
                w.error(
                    "throttle.watch.url",
                    p.get("url").map(|v| v.span()),
                    "SQLite has no live signals to watch",
                )
                .hint = Some(
                    "name a PostgreSQL or MySQL/MariaDB database, or time a statement with `probe` instead"
                        .to_owned(),
                );
                return None;
            }
            Some(url)
        });
    let interval = w
        .opt_duration(t, SECTION, "interval")
        .and_then(|(i, span)| {
            if (Duration::from_millis(10)..=Duration::from_secs(600)).contains(&i) {
                Some(i)
            } else {
                w.error(
                    "throttle.interval",
                    Some(span),
                    "must be between 10ms and 10m",
                );
                None
            }
        })
        .unwrap_or(d.interval);
    let baseline_probes = w.positive_u32(t, SECTION, "baseline_probes", d.baseline_probes);
    if !(5..=10_000).contains(&baseline_probes.get()) {
        w.error(
            "throttle.baseline_probes",
            t.get("baseline_probes").map(|v| v.span()),
            format!("must be between 5 and 10000, found {baseline_probes}"),
        )
        .hint = Some("a baseline needs enough probes for a p90; 20 takes 20 intervals".to_owned());
    }
    let window = w.positive_u32(t, SECTION, "window", d.window);
    if window.get() > 10_000 {
        w.error(
            "throttle.window",
            t.get("window").map(|v| v.span()),
            "at most 10000 probes",
        );
    }
    let max_latency_increase = w.fraction(
        t,
        SECTION,
        "max_latency_increase",
        d.max_latency_increase,
        |f| f > 0.0,
        "positive (0.10 allows +10%)",
    );
    let max_replica_lag = w
        .opt_duration(t, SECTION, "max_replica_lag")
        .and_then(|(lag, span)| {
            if lag.is_zero() {
                w.error(
                    "throttle.max_replica_lag",
                    Some(span),
                    "must be longer than zero",
                );
                None
            } else {
                Some((lag, span))
            }
        });
    let decrease_factor = w.fraction(
        t,
        SECTION,
        "decrease_factor",
        d.decrease_factor,
        |f| f > 0.0 && f < 1.0,
        "between 0 and 1 (exclusive)",
    );
    let min_rate_fraction = w.fraction(
        t,
        SECTION,
        "min_rate_fraction",
        d.min_rate_fraction,
        |f| f > 0.0 && f <= 1.0,
        "above 0 and at most 1",
    );
    let increase_fraction = w.fraction(
        t,
        SECTION,
        "increase_fraction",
        d.increase_fraction,
        |f| f > 0.0 && f <= 1.0,
        "above 0 and at most 1",
    );
    let max_rows_per_second = t
        .get("max_rows_per_second")
        .map(|_| w.positive_u32(t, SECTION, "max_rows_per_second", u32::MAX));
    if max_rows_per_second.is_none() && limits.rows_per_second.is_none() {
        w.error(SECTION, None, "the throttle has no maximum rate")
            .hint = Some(
            "set `throttle.max_rows_per_second` or `limits.rows_per_second`: the rate the run starts at and never exceeds"
                .to_owned(),
        );
    }
    if probe.is_none() && watch.is_none() {
        if let Some((_, span)) = &max_replica_lag {
            w.error("throttle.max_replica_lag", Some(span.clone()), "`max_replica_lag` needs `watch` or `probe`")
                .hint = Some("the lag is measured on the watched (or the probe's) database; add `watch = { url = … }` naming the live database".to_owned());
        } else {
            w.warn(SECTION, None, "without `watch` or `probe` the throttle reacts to errors only")
                .hint = Some("add `watch = { url = … }` naming the live database, to follow its own statements' latency".to_owned());
        }
    }
    let watch = match watch {
        Some(Some(url)) => Some(url),
        Some(None) => return None,
        None => None,
    };
    let probe = match probe {
        Some((Some(url), Some(sql))) => Some(Probe { url, sql }),
        Some(_) => return None,
        None => None,
    };
    if w.diags.iter().filter(|d| d.is_error()).count() != problems_before {
        return None;
    }
    Some(ThrottleSpec {
        probe,
        watch,
        interval,
        baseline_probes: baseline_probes.get(),
        max_latency_increase,
        max_replica_lag: max_replica_lag.map(|(lag, _)| lag),
        decrease_factor,
        min_rate_fraction,
        increase_fraction,
        window: window.get(),
        max_rows_per_second,
    })
}

#[cfg(test)]
mod tests;
