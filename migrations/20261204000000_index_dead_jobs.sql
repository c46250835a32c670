-- The metrics sampler counts dead-letter jobs every few seconds on every node: a partial
-- index keeps that count off the (ever growing) table of finished jobs.
create index if not exists job_dead_idx on job (job_id) where status = 'dead';
