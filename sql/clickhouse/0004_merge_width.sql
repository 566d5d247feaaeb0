-- Background merges join at most 10 parts at a time (MergeTree's default is 100). chDB merges in
-- whichever process has the data path open, usually the step that runs next: a load leaves up to
-- one part per day per stage batch (100 a day at 10M rows over 5 days), and merging 100 parts at
-- once held ~470 MiB of read buffers in that process (~180 MiB with 10). Merges take more rounds;
-- queries read the unmerged parts meanwhile, FINAL still deduplicating.
ALTER TABLE unified_items MODIFY SETTING max_parts_to_merge_at_once = 10;
ALTER TABLE orders_fact MODIFY SETTING max_parts_to_merge_at_once = 10;
ALTER TABLE customers_dim MODIFY SETTING max_parts_to_merge_at_once = 10;
ALTER TABLE products_dim MODIFY SETTING max_parts_to_merge_at_once = 10;
