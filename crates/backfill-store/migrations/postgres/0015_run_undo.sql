-- Whether a run keeps an undo log (the spec's `target.undo` when the run was created, its
-- default applied): 1 or 0. A resumed run keeps the setting it began with, whatever the spec
-- says now, so its rollback never restores only part of it. NULL for runs created before it
-- was recorded.
ALTER TABLE runs ADD COLUMN undo_log BIGINT;
