//! Integration tests of the real `backfill` binary on real SQLite files.
//!
//! One test crate (this file plus modules) keeps link time low. Each test works in its own
//! temporary folder with its own databases and state store, so tests run in parallel.

mod private_server;
mod support;

mod canary;
mod check;
mod claim;
mod controls;
mod crash;
mod crash_db;
mod db_outage;
mod db_restart;
mod demo;
mod diff;
mod edge_values;
mod errors;
mod exchange;
mod idempotency;
mod lifecycle;
mod live_signals;
mod matrix;
mod only_gaps;
mod output;
mod readiness;
mod replan;
mod replica_lag;
mod report;
mod rollback;
mod serve;
mod shadow;
mod sql_mode;
mod validate;
mod wide_rows;
