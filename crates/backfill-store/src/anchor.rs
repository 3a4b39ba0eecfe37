//! The anchor of the audit chain's head: the last event's `seq` and `hash`, kept in the
//! one-row table `audit_head` (migration 11) and rewritten by the statement of every append.
//!
//! The chain alone cannot show that its last events were removed: what is left still links.
//! The anchor can: [`check_tail`] fails when the chain does not end at the anchored event,
//! naming the missing range. It lives in the same store, so it guards against a tail lost or
//! cut by a tool that deletes events (a restore of an older `audit_events`, a careless
//! `DELETE`), not against someone who also rewrites the anchor; an external copy of the head
//! covers that.
//!
//! Stores older than migration 11 are anchored at their last event when they migrate; a store
//! without any event has no anchor, and a chain without an anchor verifies as before.

use crate::StoreError;
use crate::db::{Conn, Dialect, stmt};

/// Moves the anchor to the event whose `seq` and `hash` are its two parameters.
const ADVANCE: &str = "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) \
     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";

/// `insert` (the `INSERT` of events, with its parameters) followed by the move of the anchor
/// to the last of them, whose `seq` and `hash` are the two parameters after `insert`'s: one
/// statement, so an append is one round trip. SQLite runs the two in sequence; PostgreSQL
/// runs the insert as a data-modifying `WITH`, which always runs to completion.
pub(crate) fn advancing(dialect: Dialect, insert: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("{insert}; {ADVANCE}"),
        Dialect::Postgres => format!("WITH appended AS ({insert}) {ADVANCE}"),
    }
}

/// The anchored head: `(seq, hash)`, or `None` when nothing is anchored yet.
pub(crate) async fn head(conn: &mut Conn) -> Result<Option<(i64, String)>, StoreError> {
    let row = stmt("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(conn)
        .await?;
    row.map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
        .transpose()
}

/// What is wrong with the chain's end, given its last event (`None`: no event) and the
/// anchor: `(first bad seq, problem)`, or `None` when the chain ends at the anchor.
pub(crate) fn check_tail(
    last: Option<(i64, &str)>,
    anchor: Option<(i64, &str)>,
) -> Option<(i64, String)> {
    let (anchor_seq, anchor_hash) = anchor?;
    let short = |h: &str| h.chars().take(12).collect::<String>();
    match last {
        Some((seq, _)) if seq < anchor_seq => Some((
            seq + 1,
            format!(
                "events {}..={anchor_seq} are missing: the chain ends at event {seq}, but its \
                 head was anchored at event {anchor_seq} (hash {}…); the tail was removed",
                seq + 1,
                short(anchor_hash)
            ),
        )),
        None => Some((
            1,
            format!(
                "events 1..={anchor_seq} are missing: the store holds no event, but its head \
                 was anchored at event {anchor_seq} (hash {}…); the events were removed",
                short(anchor_hash)
            ),
        )),
        Some((seq, hash)) if seq == anchor_seq && hash != anchor_hash => Some((
            seq,
            format!(
                "event {seq} is not the anchored head (hash {}…, anchored {}…): the tail was \
                 replaced",
                short(hash),
                short(anchor_hash)
            ),
        )),
        Some((seq, _)) if seq > anchor_seq => Some((
            anchor_seq + 1,
            format!(
                "events {}..={seq} were appended past the anchored head (event {anchor_seq}) \
                 without moving it: written around the store",
                anchor_seq + 1
            ),
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::check_tail;

    #[test]
    fn the_tail_must_reach_the_anchor() {
        assert_eq!(check_tail(Some((5, "h5")), None), None);
        assert_eq!(check_tail(None, None), None);
        assert_eq!(check_tail(Some((5, "h5")), Some((5, "h5"))), None);
        let (seq, problem) = check_tail(Some((3, "h3")), Some((5, "h5"))).unwrap();
        assert_eq!(seq, 4);
        assert!(problem.starts_with("events 4..=5 are missing"), "{problem}");
        assert_eq!(check_tail(None, Some((2, "h2"))).unwrap().0, 1);
        assert_eq!(check_tail(Some((5, "x")), Some((5, "h5"))).unwrap().0, 5);
        assert_eq!(check_tail(Some((7, "h7")), Some((5, "h5"))).unwrap().0, 6);
    }
}
