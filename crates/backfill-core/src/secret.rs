//! Secrets that cannot be printed by accident.
//!
//! A database URL may carry a password. [`SecretUrl`] keeps the real URL for connecting and
//! shows only a redacted form through `Display` and `Debug`; [`redact`] masks URL passwords
//! inside free text such as a driver's error message. Invariant 8: a password never reaches a
//! log line, an audit event, a report or the UI.

use std::fmt;

/// A connection URL whose password is masked whenever it is displayed or debug-printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    /// The URL to connect with (a relative SQLite path already made absolute).
    url: String,
    /// The URL as the spec wrote it (relative SQLite path kept), when it differs.
    written: Option<String>,
}

impl SecretUrl {
    /// Wraps a URL (after `${VAR}` expansion, so it may hold a real password).
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl {
            url: url.into(),
            written: None,
        }
    }

    /// Records `written` as the way the spec names this database (`${VAR}` expanded, a
    /// relative SQLite path still relative): [`Self::identity`] derives from it, while
    /// [`Self::expose`] stays the URL to connect with.
    pub fn written_as(mut self, written: impl Into<String>) -> Self {
        let written = written.into();
        self.written = (written != self.url).then_some(written);
        self
    }

    /// The real URL, for handing to a driver only. Never log the result.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    /// The database as the spec names it, with no password at all (neither in the user
    /// part nor as a `…password=` parameter): the same for any folder the spec lies in and
    /// for any password, so it can be hashed into the plan and stored with a run.
    pub fn identity(&self) -> String {
        without_password(self.written.as_deref().unwrap_or(&self.url))
    }

    /// The scheme before `:` (`sqlite`, `postgres`, …), lower-cased.
    pub fn scheme(&self) -> String {
        self.url
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

/// `url` without the password of its user part and without `…password=` query parameters;
/// [`redact`] then masks anything password-like left (a malformed URL).
fn without_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    format!("{user}@{host}")
                }
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|param| {
                let key = param.split('=').next().unwrap_or_default();
                !key.to_ascii_lowercase().ends_with("password")
            })
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    redact(&out)
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

    #[test]
    fn identity_has_no_password_and_keeps_the_url_as_written() {
        let cases = [
            (
                "postgres://bob:hunter2@db:5432/shop",
                "postgres://bob@db:5432/shop",
            ),
            ("postgres://bob@db:5432/shop", "postgres://bob@db:5432/shop"),
            (
                "postgres://h/db?sslmode=require&password=s3cret&sslpassword=x",
                "postgres://h/db?sslmode=require",
            ),
            (
                "mysql://root:p@ss:w@127.0.0.1/test",
                "mysql://root@127.0.0.1/test",
            ),
            ("postgres://h/db?password=s3cret", "postgres://h/db"),
        ];
        for (url, want) in cases {
            assert_eq!(SecretUrl::new(url).identity(), want, "{url}");
        }
        let moved =
            SecretUrl::new("sqlite:///home/me/demo/source.db").written_as("sqlite://source.db");
        assert_eq!(moved.identity(), "sqlite://source.db");
        assert_eq!(moved.expose(), "sqlite:///home/me/demo/source.db");
    }
}
