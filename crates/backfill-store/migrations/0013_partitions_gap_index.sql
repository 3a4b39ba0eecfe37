-- `status` reads how many partitions a diff before the run skipped and lists the ones that
-- differed; without an index both scanned every partition of the run (0.3 s of `status` at
-- 1,000,000 partitions). Partial: only partitions a diff looked at (`gap` set) are indexed.
CREATE INDEX partitions_gap ON partitions (run_id, gap, idx) WHERE gap IS NOT NULL;
