//! Dev-only helpers shared by every test crate of the workspace.
//!
//! - [`skip`]: the one decision on a missing server (skip the test, counted as skipped, or
//!   fail it when services are required), and the skip log `scripts/test` counts.
//! - [`servers`]: the test servers' URLs and a per-test PostgreSQL schema or MySQL/MariaDB
//!   database, created on entry and dropped at the end (also when the test panics).
//!
//! This crate is a `[dev-dependencies]` entry of the other crates and never a normal one
//! (the tidy test checks it), so nothing here reaches the `backfill` binary. Its helpers panic
//! on unexpected errors, as test code should, with messages that name the statement or file
//! and never print a password.

pub mod servers;
pub mod skip;

pub use servers::{Db, Isolated, MyDatabase, PgSchema, System, mysql_url, postgres_url, unique};
pub use skip::{missing, required, skip_or_fail, unreachable};
