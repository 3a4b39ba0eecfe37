//! What a crash at any moment can do to the target of a run: its delivery guarantee.
//!
//! The guarantee follows from two facts known before the run starts: the write mode, and
//! whether the target database is the state store's database (then a checkpoint can commit
//! in the same transaction as the write it records). `plan` states it, every run records it
//! and `status` shows it, so nobody has to infer it from the configuration.

use crate::spec::WriteMode;

/// The delivery guarantee of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// Upsert into the state store's own database: each batch and its checkpoint commit in
    /// one transaction, so after any crash no batch is written twice and none is missed.
    ExactlyOnce,
    /// Upsert or replace elsewhere: the write is idempotent and its checkpoint follows the
    /// commit. After a crash the last batch (upsert) or the unfinished partition (replace)
    /// is written again, which leaves the target in the same end state.
    Idempotent,
    /// `sql` mode: after a crash the partition's statement runs again; the end state is the
    /// same only if the statement is itself replay-safe (e.g. `INSERT … ON CONFLICT`).
    StatementReplay,
}

impl Guarantee {
    /// The guarantee of a run in `mode`; `checkpoint_in_target` is true when the target is
    /// the state store's database.
    pub fn of(mode: &WriteMode, checkpoint_in_target: bool) -> Guarantee {
        match mode {
            WriteMode::Upsert if checkpoint_in_target => Guarantee::ExactlyOnce,
            WriteMode::Upsert | WriteMode::Replace { .. } => Guarantee::Idempotent,
            WriteMode::Sql { .. } => Guarantee::StatementReplay,
        }
    }

    /// The stable name used in JSON output and in the state store.
    pub fn name(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly_once",
            Guarantee::Idempotent => "idempotent",
            Guarantee::StatementReplay => "statement_replay",
        }
    }

    /// The guarantee named `name` (see [`Guarantee::name`]), if any.
    pub fn from_name(name: &str) -> Option<Guarantee> {
        [
            Guarantee::ExactlyOnce,
            Guarantee::Idempotent,
            Guarantee::StatementReplay,
        ]
        .into_iter()
        .find(|g| g.name() == name)
    }

    /// One sentence for people: what a crash can and cannot do.
    pub fn explain(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => {
                "exactly once: each batch commits with its checkpoint in the target database \
                 (it is the state store), so a crash never writes a batch twice"
            }
            Guarantee::Idempotent => {
                "idempotent: checkpoints follow each committed write in another database; a \
                 crash may write the last batch or partition again, with the same end state"
            }
            Guarantee::StatementReplay => {
                "statement replay: a crash runs the partition's statement again; the end \
                 state is the same only if the statement is replay-safe"
            }
        }
    }
}

impl std::fmt::Display for Guarantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upsert_into_the_store_database_is_exactly_once() {
        let replace = WriteMode::Replace {
            window_column: "ts".into(),
        };
        let sql = WriteMode::Sql {
            statement: "INSERT …".into(),
        };
        assert_eq!(
            Guarantee::of(&WriteMode::Upsert, true),
            Guarantee::ExactlyOnce
        );
        assert_eq!(
            Guarantee::of(&WriteMode::Upsert, false),
            Guarantee::Idempotent
        );
        assert_eq!(Guarantee::of(&replace, true), Guarantee::Idempotent);
        assert_eq!(Guarantee::of(&replace, false), Guarantee::Idempotent);
        assert_eq!(Guarantee::of(&sql, true), Guarantee::StatementReplay);
        assert_eq!(Guarantee::of(&sql, false), Guarantee::StatementReplay);
    }

    #[test]
    fn names_round_trip() {
        for g in [
            Guarantee::ExactlyOnce,
            Guarantee::Idempotent,
            Guarantee::StatementReplay,
        ] {
            assert_eq!(Guarantee::from_name(g.name()), Some(g));
            assert!(g.explain().starts_with(&g.name().replace('_', " ")));
        }
        assert_eq!(Guarantee::from_name("at_most_once"), None);
    }
}
