//! The `backfill` binary: arguments, output and exit codes only. The work is done by
//! `backfill-engine`; this crate turns it into commands for people and scripts.
//!
//! Exit codes: 0 success, 1 the work failed (or is unfinished), 2 the user's input is wrong.

mod args;
mod commands;
mod output;
mod progress;
mod specfile;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, LogFormat};
use crate::output::Output;

/// An error in what the user gave us (spec, arguments, run id): exit code 2.
#[derive(Debug)]
pub(crate) struct UserError {
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl UserError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        UserError {
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

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

fn main() -> ExitCode {
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
            out.error(&format!("cannot start the async runtime: {e}"), &[], None);
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
        Command::Throttle(args) => commands::control::throttle(&args, &state, out).await,
        Command::Status(args) => commands::status::run(&args, &state, out).await,
        Command::Runs(args) => commands::status::list(&args, &state, out).await,
        Command::Audit(args) => commands::audit::run(&args, &state, out).await,
        Command::Quarantine(args) => commands::quarantine::run(&args, &state, out).await,
        Command::Demo(args) => commands::demo::run(&args, out).await,
        Command::Docs(args) => commands::docs::run(&args, out),
    }
}

/// Prints `error` (redacted) with its causes and hint; returns the exit code.
fn report(out: &Output, error: &anyhow::Error) -> ExitCode {
    use backfill_core::secret::redact;
    if let Some(Reported(code)) = error.downcast_ref::<Reported>() {
        return ExitCode::from(*code);
    }
    if let Some(user) = error.downcast_ref::<UserError>() {
        out.error(&redact(&user.message), &[], user.hint.as_deref());
        return ExitCode::from(2);
    }
    let causes: Vec<String> = error
        .chain()
        .skip(1)
        .map(|c| redact(&c.to_string()))
        .collect();
    out.error(&redact(&error.to_string()), &causes, None);
    ExitCode::from(1)
}

fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},sqlx=warn")));
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
