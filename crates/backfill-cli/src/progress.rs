//! Live progress of a run: a bar on a terminal, periodic plain lines otherwise (stderr).

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use backfill_engine::Event;
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
                        None if !quiet => eprintln!("{line}"),
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
                        None if !quiet => eprintln!("{line}"),
                        None => {}
                    }
                }
                Event::Stopping => {
                    let line =
                        "stopping: finishing in-flight batches (Ctrl-C again to stop at once)";
                    match &bar {
                        Some(bar) => bar.println(line),
                        None => eprintln!("{line}"),
                    }
                }
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
                    eprintln!(
                        "progress: {}/{} partitions, {msg}, ETA {:.0}s",
                        finished + failed,
                        total,
                        per * left as f64
                    );
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
