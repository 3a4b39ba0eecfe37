-- Failed attempts per partition, so status can report errors per 1,000 rows without counting
-- attempts that were only interrupted (a pause or a crash is not an error).
ALTER TABLE partitions ADD COLUMN errors BIGINT NOT NULL DEFAULT 0;
