//! The pure model of a backfill: spec, scope, planner, state machines and policies.
//!
//! Owns: parsing and validating spec files into precise types ([`spec`]), cutting a scope into
//! partitions ([`plan`]), a run's delivery guarantee ([`guarantee`]), the run and partition
//! state machines ([`state`]), the retry policy ([`retry`]), time formats for binding window bounds ([`timefmt`]), named SQL parameters
//! ([`params`]), the values that move between connectors ([`value`]) and secret handling
//! ([`secret`]).
//!
//! Deliberately does not: open files or connections, read the clock, draw random numbers or
//! spawn tasks. The same input always gives the same output, so a plan made on one machine is
//! the plan made on any other, and every policy is testable without waiting.

pub mod diag;
pub mod guarantee;
pub mod params;
pub mod plan;
pub mod retry;
pub mod secret;
pub mod spec;
pub mod state;
pub mod timefmt;
pub mod value;

pub use diag::{Diagnostic, Severity};
pub use guarantee::Guarantee;
pub use plan::{Partition, Plan, Scope, Step, Window};
pub use secret::SecretUrl;
pub use spec::{Spec, WriteMode};
pub use state::{PartitionState, RunState};
pub use timefmt::TimeFormat;
pub use value::{Batch, RowCounts, Value, decode_key, encode_key};
