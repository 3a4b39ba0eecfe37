//! The spec walker: reads typed values out of the spanned TOML document and records a
//! diagnostic (field path, span, hint) for every value it cannot use, instead of stopping at
//! the first. Each section's rules live in their own module; this one only knows TOML types.

use std::num::NonZeroU32;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::Diagnostic;
use crate::spec::schema::{keys_under, suggest};

/// The document being walked and every problem found so far.
pub(super) struct Walker<'t> {
    /// The spec text, for turning spans into `line:column`.
    pub(super) text: &'t str,
    /// Errors and warnings, in the order found (sorted by position at the end).
    pub(super) diags: Vec<Diagnostic>,
}

pub(super) type Table<'i> = DeTable<'i>;
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

impl<'t> Walker<'t> {
    pub(super) fn error(
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

    pub(super) fn warn(
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
    pub(super) fn unknown_keys(&mut self, table: &Table<'_>, prefix: &str) {
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

    pub(super) fn section<'a, 'i>(
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

    pub(super) fn string(
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

    pub(super) fn boolean(
        &mut self,
        table: &Table<'_>,
        section: &str,
        key: &str,
        default: bool,
    ) -> bool {
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

    pub(super) fn integer(
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

    pub(super) fn positive_u32(
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
    pub(super) fn float(
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
    pub(super) fn fraction(
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
    pub(super) fn positive_u64(
        &mut self,
        table: &Table<'_>,
        section: &str,
        key: &str,
    ) -> Option<u64> {
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
    pub(super) fn opt_duration(
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
    pub(super) fn subtable<'a, 'i>(
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
}

/// The dotted path of `key` in `section` (`key` alone at the root).
pub(super) fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// What a value is, for "expected …, found {kind}" messages.
pub(super) fn kind(v: &DeValue<'_>) -> &'static str {
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
