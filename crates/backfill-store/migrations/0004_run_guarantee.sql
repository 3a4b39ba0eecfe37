-- The delivery guarantee a run has (backfill_core::Guarantee::name: exactly_once,
-- idempotent, statement_replay), decided when the run is created; NULL for runs created
-- before it was recorded.
ALTER TABLE runs ADD COLUMN guarantee TEXT;
