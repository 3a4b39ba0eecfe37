-- The normalised spec a run was planned from (backfill_core::NormalizedSpec::to_json: the
-- fields that decide its partitions and the data it writes, no password), so a refused
-- resume can name each field that changed. NULL for runs created before it was stored.
ALTER TABLE runs ADD COLUMN normalized_spec TEXT;
