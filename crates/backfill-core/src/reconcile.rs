//! How a spec's runs are reconciled after writing (`[validate]`, issue 11): by comparing the
//! source's and the target's row fingerprints per window, by a pair of check queries in `sql`
//! mode, or not at all, with the reason `plan`, the run summary and `status` show.
//!
//! Owns the decision only; the engine's `reconcile` module runs the queries. Pure: the same
//! spec always gives the same decision.
//!
//! Rules: a spec without `[validate]` is reconciled by default wherever that can work, and
//! is "not verified" (with a reason) where it cannot: no column places rows in partitions,
//! `sql` mode without checks, or a `target.guard` (which keeps newer target rows, so the
//! sides may differ by design). A spec with `[validate]` that cannot work is refused by the
//! parser, so it is always reconciled unless both `after_partition` and `at_end` are false.

use crate::plan::Scope;
use crate::spec::{Spec, WriteMode};

/// What reconciliation a spec's runs get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconcile {
    /// Compare both sides' rows, placed in partitions by `window_column`.
    Rows {
        /// The column (in the source's result and in the target table) whose value places
        /// a row in a partition.
        window_column: String,
    },
    /// `sql` mode: run `source_check` and `target_check` per window; their rows must match.
    Checks,
    /// Nothing is compared; partitions are "not verified".
    NotVerified {
        /// Why, in words, with what to change.
        reason: String,
    },
}

impl Reconcile {
    /// True when something is compared.
    pub fn is_on(&self) -> bool {
        !matches!(self, Reconcile::NotVerified { .. })
    }

    /// The reason nothing is compared, when nothing is.
    pub fn not_verified_reason(&self) -> Option<&str> {
        match self {
            Reconcile::NotVerified { reason } => Some(reason),
            _ => None,
        }
    }
}

/// The reconciliation of `spec`'s runs (see the module doc for the rules).
pub fn reconcile(spec: &Spec) -> Reconcile {
    let v = &spec.validate;
    if !v.after_partition && !v.at_end {
        return Reconcile::NotVerified {
            reason: "`validate.after_partition` and `validate.at_end` are both false".to_owned(),
        };
    }
    if let WriteMode::Sql { .. } = spec.target.mode {
        return if v.source_check.is_some() && v.target_check.is_some() {
            Reconcile::Checks
        } else {
            Reconcile::NotVerified {
                reason: "`sql` mode makes its own rows: set `validate.source_check` and \
                         `validate.target_check` to reconcile"
                    .to_owned(),
            }
        };
    }
    if spec.target.guard.is_some() && !v.explicit {
        return Reconcile::NotVerified {
            reason: "`target.guard` keeps newer target rows, so the target may differ from the \
                     source by design: add `[validate]` to reconcile anyway"
                .to_owned(),
        };
    }
    match window_column(spec) {
        Some(window_column) => Reconcile::Rows { window_column },
        None => Reconcile::NotVerified {
            reason: "no column places rows in partitions: set `source.time_column` or \
                     `validate.window_column`"
                .to_owned(),
        },
    }
}

/// The window column, as `diff` decides it: `validate.window_column`, `replace`'s
/// `window_column`, `source.time_column`, or a one-column key of a key scope.
pub fn window_column(spec: &Spec) -> Option<String> {
    if let Some(c) = &spec.validate.window_column {
        return Some(c.clone());
    }
    if let WriteMode::Replace { window_column } = &spec.target.mode {
        return Some(window_column.clone());
    }
    if let Some(c) = spec.source.as_ref().and_then(|s| s.time_column.clone()) {
        return Some(c);
    }
    match (&spec.scope, spec.target.key.as_slice()) {
        (Scope::Key { .. }, [one]) => Some(one.clone()),
        _ => None,
    }
}
