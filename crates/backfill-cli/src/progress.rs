//! Live progress of a run: a bar on a terminal, periodic plain lines otherwise (stderr).

use std::time::{Duration, Instant};

use backfill_engine::{Event, Hold};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often plain (non-TTY) progress lines are printed.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Starts rendering events for a run with `total` partitions of which `done` are already done.
/// Returns the sender for the engine and a handle that completes when the sender is dropped.
pub(crate) fn start(
    total: u64,
    done: u64,
    tty: bool,
    quiet: bool,
) -> (mpsc::UnboundedSender<Event>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut total = total;
    let handle = tokio::spawn(async move {
        let bar = if tty && !quiet {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} partitions  {msg}  ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(done);
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            None
        };
        let started = Instant::now();
        let mut last_line = Instant::now();
        let mut rows: u64 = 0;
        let mut finished = done;
        let mut failed: u64 = 0;
        while let Some(event) = rx.recv().await {
            match &event {
                Event::BatchWritten { counts, .. } => rows += counts.read,
                Event::PartitionDone { .. } => finished += 1,
                Event::PartitionFailed {
                    partition_id,
                    error,
                } => {
                    failed += 1;
                    let line = format!("partition {partition_id} failed: {error}");
                    match &bar {
                        Some(bar) => bar.println(line),
                        None if !quiet => crate::output::err_line(&line),
                        None => {}
                    }
                }
                Event::PartitionRetrying {
                    partition_id,
                    attempt,
                    error,
                    delay,
                } => {
                    let line = format!(
                        "partition {partition_id} attempt {attempt} failed, retrying in {:.1}s: {error}",
                        delay.as_secs_f64()
                    );
                    match &bar {
                        Some(bar) => bar.println(line),
                        None if !quiet => crate::output::err_line(&line),
                        None => {}
                    }
                }
                Event::Stopping => {
                    let line =
                        "stopping: finishing in-flight batches (Ctrl-C again to stop at once)";
                    match &bar {
                        Some(bar) => bar.println(line),
                        None => crate::output::err_line(line),
                    }
                }
                Event::Holding { hold } => {
                    let line = match hold {
                        Hold::Cancel => "cancel requested: finishing in-flight batches".to_owned(),
                        Hold::User => {
                            "paused by `backfill pause`: finishing in-flight batches, then waiting for `backfill resume`".to_owned()
                        }
                        Hold::CircuitOpen { errors } => format!(
                            "circuit breaker open: too many failed batches (last: {}); paused until `backfill resume`",
                            errors.last().map_or("-", String::as_str)
                        ),
                        Hold::BudgetExhausted { lines } => format!(
                            "budget exhausted ({}): paused until `backfill resume --extend-budget …`",
                            lines.join(", ")
                        ),
                        Hold::BurnRate { budget, detail } => format!(
                            "burning the {budget} too fast after the throttle ({detail}): paused (reason burn_rate) until `backfill resume`"
                        ),
                        Hold::OutsideWindow { opens_at } => format!(
                            "outside the run window: paused until {}",
                            opens_at.to_rfc3339()
                        ),
                    };
                    say(&bar, quiet, line);
                }
                Event::Released => say(&bar, quiet, "resumed".to_owned()),
                Event::PartitionSplit {
                    partition_id,
                    children,
                } => {
                    // The children replace the parent in the count.
                    total += u64::from(*children).saturating_sub(1);
                    if let Some(bar) = &bar {
                        bar.set_length(total);
                    }
                    say(
                        &bar,
                        quiet,
                        format!("partition {partition_id} split into {children} partitions (skew)"),
                    );
                }
                Event::Throttled {
                    rows_per_second,
                    batches_per_second,
                    concurrency,
                } => say(
                    &bar,
                    quiet,
                    format!(
                        "limits changed: {} rows/s, {} batches/s, concurrency {concurrency}",
                        limit_text(*rows_per_second),
                        limit_text(*batches_per_second)
                    ),
                ),
                Event::BudgetWarning { kind, used, limit } => say(
                    &bar,
                    quiet,
                    format!("budget warning: {kind} {used:.0} of {limit:.0} used (80%)"),
                ),
                Event::PartitionStarted { .. } => {}
            }
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let rate = rows as f64 / secs;
            let msg = format!(
                "{} rows  {:.0} rows/s{}",
                rows,
                rate,
                if failed > 0 {
                    format!("  {failed} failed")
                } else {
                    String::new()
                }
            );
            match &bar {
                Some(bar) => {
                    bar.set_position(finished + failed);
                    bar.set_message(msg);
                }
                None if !quiet && last_line.elapsed() >= PLAIN_EVERY => {
                    last_line = Instant::now();
                    let left = total.saturating_sub(finished + failed);
                    let per = secs / (finished + failed).saturating_sub(done).max(1) as f64;
                    crate::output::err_line(&format!(
                        "progress: {}/{} partitions, {msg}, ETA {:.0}s",
                        finished + failed,
                        total,
                        per * left as f64
                    ));
                }
                None => {}
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    });
    (tx, handle)
}

/// Prints one line above the bar, or on stderr without a bar (unless quiet).
fn say(bar: &Option<ProgressBar>, quiet: bool, line: String) {
    match bar {
        Some(bar) => bar.println(line),
        None if !quiet => crate::output::err_line(&line),
        None => {}
    }
}

/// A limit for people: `none` for 0.
fn limit_text(n: u32) -> String {
    if n == 0 {
        "no limit".to_owned()
    } else {
        n.to_string()
    }
}
