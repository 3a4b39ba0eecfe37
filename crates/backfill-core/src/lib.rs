//! The pure model of a backfill: spec, scope, planner, state machines and policies.
//!
//! Owns: parsing and validating spec files into precise types ([`spec`]), cutting a scope into
//! partitions ([`plan`]) identified by the normalised spec ([`normalized`]), a run's delivery
//! guarantee ([`guarantee`]), row and key-range fingerprints that agree across databases
//! ([`fingerprint`]), the run and partition state machines ([`state`]), the policies
//! that keep a run safe (retries [`retry`], adaptive throttling [`aimd`] and
//! its live signals [`live`], budgets
//! [`budget`], run windows [`run_window`], partition order [`order`], the circuit breaker
//! [`breaker`]), time formats for binding window bounds ([`timefmt`]), named SQL parameters
//! ([`params`]), the values that move between connectors ([`value`]), secret handling
//! ([`secret`]) and the decision how runs are reconciled after writing ([`reconcile`]).
//!
//! Deliberately does not: open files or connections, read the clock, draw random numbers or
//! spawn tasks. The same input always gives the same output, so a plan made on one machine is
//! the plan made on any other, and every policy is testable without waiting.

pub mod aimd;
pub mod breaker;
pub mod budget;
pub mod canary;
pub mod diag;
pub mod fingerprint;
pub mod guarantee;
pub mod live;
pub mod normalized;
pub mod order;
pub mod params;
pub mod plan;
pub mod reconcile;
pub mod retry;
pub mod run_window;
pub mod secret;
pub mod slo;
pub mod spec;
pub mod split;
pub mod state;
pub mod timefmt;
pub mod value;

pub use aimd::{Aimd, RateCause, RateChange, percentile};
pub use breaker::{Breaker, BreakerPolicy};
pub use budget::{
    Budget, BudgetExtension, BudgetKind, BudgetLine, BudgetUse, BudgetVerdict, CostModel,
    WARN_FRACTION,
};
pub use diag::{Diagnostic, Severity};
pub use guarantee::Guarantee;
pub use normalized::{FieldChange, NormalizedSpec};
pub use order::{Order, PriorityRange, order_partitions};
pub use plan::{Partition, Plan, Scope, Step, Window};
pub use run_window::{RunWindow, WindowState};
pub use secret::SecretUrl;
pub use spec::{CanarySpec, Probe, ReadyCheck, Spec, ThrottleSpec, ValidateSpec, WriteMode};
pub use state::{PartitionState, RunState};
pub use timefmt::TimeFormat;
pub use value::{Batch, RowCounts, Value, decode_key, encode_key};
