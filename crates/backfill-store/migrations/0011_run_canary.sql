-- The canary of a run (`[canary]`, issue 11), as JSON: the seed, the chosen partitions and
-- why, and how it ended (`passed`, `failed`) and who approved it. NULL for runs without one.
ALTER TABLE runs ADD COLUMN canary TEXT;
