//! Named parameters `:start` and `:end` in user SQL, rewritten to a driver's placeholders.
//!
//! The window bounds are always bound values, never pasted into SQL text. This module finds
//! `:name` markers outside string literals, quoted identifiers and comments, and rewrites them
//! to positional placeholders, returning which name each position binds. Casts such as
//! `x::date` (PostgreSQL) are left alone.

/// How a database spells positional placeholders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholder {
    /// `?1`, `?2` (SQLite): a repeated name reuses its number.
    QuestionNumbered,
    /// `$1`, `$2` (PostgreSQL): a repeated name reuses its number.
    DollarNumbered,
    /// `?` (MySQL): every occurrence is its own parameter.
    Question,
}

/// SQL with positional placeholders and the parameter name bound at each position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// The SQL to prepare.
    pub sql: String,
    /// Parameter names (without `:`), one per placeholder number (or occurrence for `?`).
    pub names: Vec<String>,
}

/// The named parameters used in `sql`, in order of first appearance, without duplicates.
pub fn named_params(sql: &str) -> Vec<String> {
    let mut names = Vec::new();
    scan(sql, |_, name| {
        if let Some(name) = name
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_owned());
        }
    });
    names
}

/// Rewrites every `:name` in `sql` into `style` placeholders.
pub fn rewrite(sql: &str, style: Placeholder) -> Rewritten {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut names: Vec<String> = Vec::new();
    scan(sql, |text, name| match name {
        None => out.push_str(text),
        Some(name) => {
            let index = match style {
                Placeholder::Question => {
                    names.push(name.to_owned());
                    names.len()
                }
                _ => match names.iter().position(|n| n == name) {
                    Some(i) => i + 1,
                    None => {
                        names.push(name.to_owned());
                        names.len()
                    }
                },
            };
            match style {
                Placeholder::QuestionNumbered => out.push_str(&format!("?{index}")),
                Placeholder::DollarNumbered => out.push_str(&format!("${index}")),
                Placeholder::Question => out.push('?'),
            }
        }
    });
    Rewritten { sql: out, names }
}

/// Walks `sql`, calling `emit(text, None)` for plain text and `emit(marker, Some(name))` for
/// each named parameter.
fn scan(sql: &str, mut emit: impl FnMut(&str, Option<&str>)) {
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut plain_from = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        // A doubled quote is an escaped quote inside the literal.
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b':' if bytes.get(i + 1) == Some(&b':') => i += 2,
            b':' if bytes
                .get(i + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') =>
            {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                emit(&sql[plain_from..i], None);
                emit(&sql[i..end], Some(&sql[start..end]));
                i = end;
                plain_from = end;
            }
            _ => i += 1,
        }
    }
    if plain_from < sql.len() {
        emit(&sql[plain_from.min(sql.len())..], None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_outside_literals_and_comments() {
        let sql = "SELECT ':start', x::date FROM t -- :end\n WHERE ts >= :start AND ts < :end /* :x */ AND y = :start";
        let r = rewrite(sql, Placeholder::QuestionNumbered);
        assert_eq!(
            r.sql,
            "SELECT ':start', x::date FROM t -- :end\n WHERE ts >= ?1 AND ts < ?2 /* :x */ AND y = ?1"
        );
        assert_eq!(r.names, ["start", "end"]);
        let r = rewrite(sql, Placeholder::Question);
        assert_eq!(r.names, ["start", "end", "start"]);
        let r = rewrite(sql, Placeholder::DollarNumbered);
        assert!(r.sql.contains("ts >= $1 AND ts < $2"));
    }

    #[test]
    fn lists_names_once() {
        assert_eq!(
            named_params("a = :start or b = :start and c < :end"),
            ["start", "end"]
        );
        assert!(named_params("select 'it''s :start'").is_empty());
        assert!(named_params("select 1 -- unterminated 'quote").is_empty());
        assert!(named_params("select 'unterminated :start").is_empty());
    }
}
