//! One module per subcommand.

pub(crate) mod audit;
pub(crate) mod check;
pub(crate) mod control;
pub(crate) mod demo;
pub(crate) mod diff;
pub(crate) mod docs;
pub(crate) mod gates;
pub(crate) mod objective;
pub(crate) mod only_gaps;
pub(crate) mod plan;
pub(crate) mod quarantine;
pub(crate) mod report;
pub(crate) mod rollback;
pub(crate) mod run;
pub(crate) mod shadow;
pub(crate) mod status;
pub(crate) mod validate;

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

/// Opens the state store, creating its folder for the default SQLite location. A URL that
/// names no store is the user's error (exit 2, with the forms a URL takes); a server that
/// cannot be reached, a store that cannot be opened or one written by a newer backfill is a
/// failure (exit 1) with the hint that fits it.
pub(crate) async fn open_store(url: &str) -> anyhow::Result<backfill_store::Store> {
    use backfill_store::StoreError;
    let e = match backfill_store::Store::open(url).await {
        Ok(store) => return Ok(store),
        Err(e) => e,
    };
    let failure = |hint: &str| {
        anyhow::Error::new(crate::Failure {
            message: e.to_string(),
            hint: hint.to_owned(),
        })
    };
    Err(match &e {
        StoreError::InvalidUrl { .. } => crate::UserError::new(e.to_string())
            .hint(
                "pass --state (or set BACKFILL_STATE) as a SQLite file (`sqlite://PATH` or a \
                 path) or a PostgreSQL database (`postgres://USER@HOST:PORT/DB[?schema=NAME]`)",
            )
            .into(),
        StoreError::Unreachable { .. } => failure(
            "is the PostgreSQL server running and listening at that host and port? Check \
             --state (or BACKFILL_STATE); `pg_isready -h HOST -p PORT` tells",
        ),
        StoreError::NewerSchema { .. } => failure(
            "this store was written by a newer backfill: run that version (or a later one), \
             or pass --state to another store",
        ),
        StoreError::Open { url: redacted, .. } if redacted.starts_with("postgres") => failure(
            "the server answered but refused: check the user, password and database name in \
             --state (or BACKFILL_STATE)",
        ),
        _ => failure(
            "pass --state sqlite://PATH (or set BACKFILL_STATE) to a writable location that \
             is a backfill state store",
        ),
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
