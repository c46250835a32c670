-- `order` is a reserved word, hence `pet_order`.
create table pet_order
(
    order_id         bigint generated always as identity primary key,
    user_id          uuid          not null references app_user (user_id) on delete cascade,
    -- Orders outlive their pet: history keeps the name and price as they were.
    pet_id           bigint        references pet (pet_id) on delete set null,
    pet_name         text          not null,
    quantity         integer       not null check (quantity > 0),
    unit_price       numeric(12, 2) not null,
    total            numeric(14, 2) not null,
    status           text          not null default 'placed'
        check (status in ('placed', 'approved', 'delivered', 'cancelled')),
    payment_token    text,
    -- Why a payment failed for good, when it did.
    failure_reason   text,
    -- Idempotency: one order per (user, key); the request's hash tells a retry (same body)
    -- from a misuse of the key (different body).
    idempotency_key  text,
    request_hash     bytea,
    -- The body of the first 201, replayed verbatim to retries with the same key.
    response         jsonb,
    created_at       timestamptz   not null default now(),
    updated_at       timestamptz   not null default now()
);

create unique index pet_order_idempotency_key on pet_order (user_id, idempotency_key)
    where idempotency_key is not null;
create index pet_order_user_idx on pet_order (user_id, order_id);
create index pet_order_status_idx on pet_order (status, order_id);

select trigger_updated_at('pet_order');

-- A durable job queue. Workers on every node claim due jobs with `for update skip locked` and
-- hold them under a lease; a job whose lease ran out (its node died) is due again.
create table job
(
    job_id       bigint generated always as identity primary key,
    kind         text        not null,
    payload      jsonb       not null,
    priority     integer     not null default 0,
    status       text        not null default 'queued'
        check (status in ('queued', 'running', 'done', 'dead')),
    run_at       timestamptz not null default now(),
    attempts     integer     not null default 0,
    max_attempts integer     not null,
    locked_by    text,
    locked_until timestamptz,
    last_error   text,
    finished_at  timestamptz,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);

-- The claim query: due queued jobs by priority, and expired leases.
create index job_due_idx on job (priority desc, run_at) where status = 'queued';
create index job_lease_idx on job (locked_until) where status = 'running';

select trigger_updated_at('job');

-- Every attempt of every job, for inspection (and to see backoff at work).
create table job_attempt
(
    job_id      bigint      not null references job (job_id) on delete cascade,
    attempt     integer     not null,
    node_id     text        not null,
    started_at  timestamptz not null,
    finished_at timestamptz not null default now(),
    error       text,
    -- When the next attempt was scheduled (retries only): the backoff actually applied.
    retry_at    timestamptz,
    primary key (job_id, attempt)
);
