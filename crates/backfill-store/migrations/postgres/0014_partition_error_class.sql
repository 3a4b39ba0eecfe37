-- The class of a partition's last error (`transient`, `unavailable`, `permanent`, `data`,
-- `reconcile_mismatch`, `source_not_ready`, `split`), so failing partitions group by class
-- and message (the dashboard's top errors, `GET /api/runs/RUN/errors`). NULL for errors
-- recorded before this column, and where no error was.
ALTER TABLE partitions ADD COLUMN last_error_class TEXT;
