//! Secrets that cannot be printed by accident.
//!
//! A database URL may carry a password. [`SecretUrl`] keeps the real URL for connecting and
//! shows only a redacted form through `Display` and `Debug`; [`redact`] masks URL passwords
//! inside free text such as a driver's error message. Invariant 8: a password never reaches a
//! log line, an audit event, a report or the UI.

use std::fmt;

/// A connection URL whose password is masked whenever it is displayed or debug-printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL (after `${VAR}` expansion, so it may hold a real password).
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The real URL, for handing to a driver only. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// The scheme before `:` (`sqlite`, `postgres`, …), lower-cased.
    pub fn scheme(&self) -> String {
        self.0
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

/// Masks the password of every `scheme://user:password@host` URL inside `text`, and the
/// value of `password=` query parameters. Text without URLs is returned unchanged.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    redact_password_params(&out)
}

fn redact_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.to_ascii_lowercase().find("password=") {
        let (head, tail) = rest.split_at(pos + "password=".len());
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '&' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        let cases = [
            (
                "postgres://bob:hunter2@db:5432/shop",
                "postgres://bob:***@db:5432/shop",
            ),
            ("mysql://root@127.0.0.1/test", "mysql://root@127.0.0.1/test"),
            ("sqlite://data/x.db", "sqlite://data/x.db"),
            (
                "error connecting to postgres://a:p%40ss@h/db: refused",
                "error connecting to postgres://a:***@h/db: refused",
            ),
            (
                "host=h password=s3cret user=u",
                "host=h password=*** user=u",
            ),
            (
                "postgres://h/db?password=s3cret&x=1",
                "postgres://h/db?password=***&x=1",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn display_and_debug_never_show_the_password() {
        let url = SecretUrl::new("postgres://u:topsecret@localhost/db");
        assert!(!format!("{url}").contains("topsecret"));
        assert!(!format!("{url:?}").contains("topsecret"));
        assert_eq!(url.expose(), "postgres://u:topsecret@localhost/db");
        assert_eq!(url.scheme(), "postgres");
    }
}
