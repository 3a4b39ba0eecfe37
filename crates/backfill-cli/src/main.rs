//! The `backfill` binary: arguments, output and exit codes only. The work is done by
//! `backfill-engine`; this crate turns it into commands for people and scripts.
//!
//! Exit codes: 0 success, 1 the work failed (or is unfinished), 2 the user's input is wrong.

mod args;
mod commands;
mod output;
mod progress;
mod serve;
mod specfile;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, LogFormat};
use crate::output::{ErrorReport, Output};

/// An error in what the user gave us (spec, arguments, run id): exit code 2.
#[derive(Debug)]
pub(crate) struct UserError {
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
    /// The spec's diagnostics, for the `--json` error object (they are printed as text too).
    pub(crate) diagnostics: Vec<serde_json::Value>,
}

impl UserError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        UserError {
            message: message.into(),
            hint: None,
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A failure of the work or of its surroundings that the user can act on (an unreachable
/// state store, one written by a newer backfill): exit code 1, with a hint.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) hint: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// A failure already reported to the user (e.g. a run that ended `failed`): exit code 1
/// without another message.
#[derive(Debug)]
pub(crate) struct Reported(pub(crate) u8);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Reported {}

/// One malloc arena for the whole process (glibc). By default glibc gives each thread that
/// allocates its own arena, up to 8 per core: the runtime's workers and every SQLite
/// connection's thread each keep their own free memory, which no other thread can reuse. On
/// W1-replace (PostgreSQL to PostgreSQL, 5,000,000 rows) one arena cut the peak RSS from
/// 33.9 to 30.6 MiB, and the demo's from 40.9 to 27.8 MiB; threads still allocate small
/// blocks from their own caches without the arena's lock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    // SAFETY: `mallopt` only sets a parameter of glibc's allocator, and this runs first in
    // `main`, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.global.verbose, cli.global.log_format);
    let out = Output {
        json: cli.global.json,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error(&ErrorReport {
                message: format!("cannot start the async runtime: {e}"),
                causes: Vec::new(),
                hint: None,
                exit: 1,
                diagnostics: Vec::new(),
            });
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(cli, out));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&out, &error),
    }
}

async fn dispatch(cli: Cli, out: Output) -> anyhow::Result<()> {
    let state = cli.global.state.clone();
    match cli.command {
        Command::Check(args) => commands::check::run(&args, out).await,
        Command::Plan(args) => commands::plan::run(&args, &state, out).await,
        Command::Run(args) => commands::run::run(&args, &state, out).await,
        Command::Resume(args) => commands::run::resume(&args, &state, out).await,
        Command::Pause(args) => commands::control::pause(&args, &state, out).await,
        Command::Cancel(args) => commands::control::cancel(&args, &state, out).await,
        Command::Approve(args) => commands::gates::approve(&args, &state, out).await,
        Command::Throttle(args) => commands::control::throttle(&args, &state, out).await,
        Command::Diff(args) => commands::diff::diff(&args, &state, out).await,
        Command::Gaps(args) => commands::diff::gaps(&args, &state, out).await,
        Command::Status(args) => commands::status::run(&args, &state, out).await,
        Command::Runs(args) => commands::status::list(&args, &state, out).await,
        Command::Serve(args) => serve::run(&args, &state, out).await,
        Command::Report(args) => commands::report::run(&args, &state, out).await,
        Command::Audit(args) => commands::audit::run(&args, &state, out).await,
        Command::Quarantine(args) => commands::quarantine::run(&args, &state, out).await,
        Command::Promote(args) => commands::shadow::promote(&args, &state, out).await,
        Command::Rollback(args) => commands::rollback::rollback(&args, &state, out).await,
        Command::Cleanup(args) => commands::rollback::cleanup(&args, &state, out).await,
        Command::Demo(args) => commands::demo::run(&args, out).await,
        Command::Validate(args) => commands::validate::run(&args, &state, out).await,
        Command::Docs(args) => commands::docs::run(&args, out),
    }
}

/// Prints `error` (redacted) with its causes and hint, as text or (`--json`) one JSON object;
/// returns the exit code: 2 for the user's input, 1 for anything else.
fn report(out: &Output, error: &anyhow::Error) -> ExitCode {
    if let Some(Reported(code)) = error.downcast_ref::<Reported>() {
        return ExitCode::from(*code);
    }
    let report = classify(error);
    out.error(&report);
    ExitCode::from(report.exit)
}

/// What is printed about a failed command, every text redacted.
fn classify(error: &anyhow::Error) -> ErrorReport {
    use backfill_core::secret::redact;
    if let Some(user) = error.downcast_ref::<UserError>() {
        return ErrorReport {
            message: redact(&user.message),
            causes: Vec::new(),
            hint: user.hint.as_deref().map(redact),
            exit: 2,
            diagnostics: user.diagnostics.clone(),
        };
    }
    let causes = error
        .chain()
        .skip(1)
        .map(|c| redact(&c.to_string()))
        .collect();
    let hint = error.downcast_ref::<Failure>().map(|f| redact(&f.hint));
    ErrorReport {
        message: redact(&error.to_string()),
        causes,
        hint,
        exit: 1,
        diagnostics: Vec::new(),
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // Driver logs (sqlx: statements, slow-statement warnings) are not for the user unless
    // asked for with -v.
    let default = match verbose {
        0 => "warn,sqlx=off",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
