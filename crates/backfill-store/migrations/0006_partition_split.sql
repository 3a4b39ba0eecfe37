-- Skewed partitions are split into children (`<parent>.<n>`) that carry the rest of their
-- window; a child names its parent. NULL for the partitions of the plan.
ALTER TABLE partitions ADD COLUMN parent_id TEXT;
