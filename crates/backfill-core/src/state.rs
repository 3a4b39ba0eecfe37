//! State machines of runs and partitions.
//!
//! Owns the closed set of states and the allowed transitions. It deliberately knows nothing
//! about storage: the store persists these states and refuses any transition this module
//! rejects, so an illegal move (a `done` partition going back to `running` without an explicit
//! re-plan) is impossible whatever the caller does.

use std::fmt;
use std::str::FromStr;

/// The life of a run. Terminal states are `Succeeded`, `Failed` and `Cancelled`; a `Failed` or
/// `Cancelled` run may be reopened by an explicit `resume`, which is an audited transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Created, no partition started yet.
    Planned,
    /// Workers are executing partitions.
    Running,
    /// Stopped on request (Ctrl-C, `pause`); in-flight batches were checkpointed.
    Paused,
    /// Every partition is done.
    Succeeded,
    /// Every partition finished and at least one failed permanently.
    Failed,
    /// Stopped for good by a user; only an explicit reopen continues it.
    Cancelled,
    /// The canary partitions passed and the spec requires approval (`[canary]
    /// require_approval`): nothing else runs until `backfill approve RUN`.
    AwaitingApproval,
}

impl RunState {
    /// All states, in display order.
    pub const ALL: [RunState; 7] = [
        RunState::Planned,
        RunState::Running,
        RunState::Paused,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
        RunState::AwaitingApproval,
    ];

    /// The stable lower-case name stored in the state store and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Planned => "planned",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::AwaitingApproval => "awaiting_approval",
        }
    }

    /// True when `run` should resume this run instead of starting a new one.
    pub fn is_unfinished(self) -> bool {
        matches!(
            self,
            RunState::Planned | RunState::Running | RunState::Paused | RunState::AwaitingApproval
        )
    }

    /// Whether moving from `self` to `to` is allowed. Staying in the same state is not a
    /// transition and is rejected, so every accepted call is a real change worth an audit event.
    pub fn can_move_to(self, to: RunState) -> bool {
        use RunState::*;
        matches!(
            (self, to),
            (Planned, Running)
                | (Planned, Cancelled)
                // A run that starts held (outside its window, its budget spent, a pause
                // requested before it began) waits paused without having run.
                | (Planned, Paused)
                | (Running, Paused)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Paused, Running)
                | (Paused, Cancelled)
                // An explicit resume reopens a failed run to retry its failed partitions.
                | (Failed, Running)
                | (Cancelled, Running)
                // The canary gate (`[canary] require_approval`): `backfill approve` lets the
                // run continue; cancel ends it.
                | (Running, AwaitingApproval)
                | (AwaitingApproval, Running)
                | (AwaitingApproval, Cancelled)
        )
    }
}

/// The life of one partition inside a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartitionState {
    /// Not started, or reset for a retry after a resume.
    Pending,
    /// An attempt is in progress (or was, when the process died: resume treats it as pending
    /// and continues from its checkpoint).
    Running,
    /// Every row of the window was written and checkpointed.
    Done,
    /// Every row was handled, but the target rejected some: they are in quarantine with their
    /// reason. `backfill quarantine RUN --retry` gives the partition another run.
    DoneWithQuarantine,
    /// The last attempt failed permanently or attempts ran out.
    Failed,
    /// Too big or too slow: its window was split into child partitions (`<id>.<n>`) that
    /// carry the rest of its work; see `split.rs`.
    Split,
    /// The source is not ready for its window yet (`source.ready` said no): re-checked with
    /// backoff until it is (back to `pending`) or `source.ready_timeout` passes (`failed`,
    /// reason `source_not_ready`).
    WaitingSource,
}

impl PartitionState {
    /// All states, in display order.
    pub const ALL: [PartitionState; 7] = [
        PartitionState::Pending,
        PartitionState::Running,
        PartitionState::Done,
        PartitionState::DoneWithQuarantine,
        PartitionState::Failed,
        PartitionState::Split,
        PartitionState::WaitingSource,
    ];

    /// The stable lower-case name stored in the state store and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionState::Pending => "pending",
            PartitionState::Running => "running",
            PartitionState::Done => "done",
            PartitionState::DoneWithQuarantine => "done_with_quarantine",
            PartitionState::Failed => "failed",
            PartitionState::Split => "split",
            PartitionState::WaitingSource => "waiting_source",
        }
    }

    /// True for `done` and `done_with_quarantine`: the partition needs no more work.
    /// (`split` needs none either, but its children do; see [`PartitionState::Split`].)
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            PartitionState::Done | PartitionState::DoneWithQuarantine
        )
    }

    /// Whether moving from `self` to `to` is allowed (see [`RunState::can_move_to`]).
    pub fn can_move_to(self, to: PartitionState) -> bool {
        use PartitionState::*;
        matches!(
            (self, to),
            (Pending, Running)
                | (Running, Done)
                | (Running, DoneWithQuarantine)
                // Retrying the quarantined rows re-runs the partition.
                | (DoneWithQuarantine, Pending)
                | (Running, Failed)
                // A retry after a transient error, or a resume after a crash.
                | (Running, Pending)
                // A resume of a failed run gives failed partitions a new chance.
                | (Failed, Pending)
                // Too big or too slow: children take over its window.
                | (Running, Split)
                // Source readiness: wait, then run or time out; a stop or crash resets it.
                | (Pending, WaitingSource)
                | (WaitingSource, Pending)
                | (WaitingSource, Failed)
        )
    }
}

/// A state name that is not one of the known states (a corrupted or newer state store).
#[derive(Debug, thiserror::Error)]
#[error("unknown state `{0}`")]
pub struct UnknownState(pub String);

macro_rules! state_strings {
    ($ty:ty) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty>::ALL
                    .into_iter()
                    .find(|state| state.as_str() == s)
                    .ok_or_else(|| UnknownState(s.to_owned()))
            }
        }
    };
}
state_strings!(RunState);
state_strings!(PartitionState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
        }
        for s in PartitionState::ALL {
            assert_eq!(s.as_str().parse::<PartitionState>().unwrap(), s);
        }
        assert!("bogus".parse::<RunState>().is_err());
    }

    #[test]
    fn done_partitions_stay_done() {
        for to in PartitionState::ALL {
            assert!(!PartitionState::Done.can_move_to(to), "done -> {to}");
        }
    }

    #[test]
    fn gates_of_issue_11() {
        use PartitionState::*;
        assert!(Pending.can_move_to(WaitingSource));
        assert!(WaitingSource.can_move_to(Pending));
        assert!(WaitingSource.can_move_to(Failed));
        assert!(
            !WaitingSource.can_move_to(Done),
            "a waiting partition is never done unread"
        );
        assert!(!Running.can_move_to(WaitingSource));
        assert!(RunState::Running.can_move_to(RunState::AwaitingApproval));
        assert!(RunState::AwaitingApproval.can_move_to(RunState::Running));
        assert!(RunState::AwaitingApproval.can_move_to(RunState::Cancelled));
        assert!(!RunState::AwaitingApproval.can_move_to(RunState::Succeeded));
        assert!(!RunState::Paused.can_move_to(RunState::AwaitingApproval));
        assert!(RunState::AwaitingApproval.is_unfinished());
    }

    #[test]
    fn succeeded_runs_stay_succeeded() {
        for to in RunState::ALL {
            assert!(!RunState::Succeeded.can_move_to(to), "succeeded -> {to}");
        }
    }
}
