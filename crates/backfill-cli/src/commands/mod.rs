//! One module per subcommand.

pub(crate) mod audit;
pub(crate) mod check;
pub(crate) mod control;
pub(crate) mod demo;
pub(crate) mod docs;
pub(crate) mod plan;
pub(crate) mod quarantine;
pub(crate) mod run;
pub(crate) mod status;

/// `user@host` of the current process, recorded as the owner and actor of runs.
pub(crate) fn whoami() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{user}@{host}")
}

/// Opens the state store, creating its folder for the default SQLite location.
pub(crate) async fn open_store(url: &str) -> anyhow::Result<backfill_store::Store> {
    backfill_store::Store::open(url).await.map_err(|e| {
        anyhow::Error::new(
            crate::UserError::new(format!("cannot open the state store: {e}"))
                .hint("pass --state sqlite://PATH (or set BACKFILL_STATE) to a writable location"),
        )
    })
}

/// Formats a count with thousands separators.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats seconds as `1h02m03s`, `2m03s` or `4.2s`.
pub(crate) fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_owned();
    }
    let whole = secs as u64;
    match whole {
        0..=59 => format!("{secs:.1}s"),
        60..=3599 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m{:02}s", whole / 3600, whole / 60 % 60, whole % 60),
    }
}
