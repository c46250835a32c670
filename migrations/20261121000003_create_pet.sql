-- Substring search on pet names (`name` filter) needs trigram indexes.
create extension if not exists pg_trgm;

create table pet
(
    pet_id     bigint generated always as identity primary key,
    name       text          not null,
    category   text          not null,
    tags       text[]        not null default '{}',
    photo_urls text[]        not null default '{}',
    status     text          not null default 'available' check (status in ('available', 'pending', 'sold')),
    -- Exact money: numeric, never floating point.
    price      numeric(12, 2) not null check (price >= 0),
    stock      integer       not null default 0 check (stock >= 0),
    -- Bumped by every change; the ETag, and the cache's freshness order.
    version    integer       not null default 1,
    created_at timestamptz   not null default now(),
    updated_at timestamptz   not null default now()
);

-- One index per filter and sort the list offers. Sorts end with pet_id so that keyset
-- cursors (sort value, id) are total orders.
create index pet_status_idx on pet (status);
create index pet_category_idx on pet (category);
create index pet_tags_idx on pet using gin (tags);
create index pet_name_trgm_idx on pet using gin (lower(name) gin_trgm_ops);
create index pet_name_sort_idx on pet (name, pet_id);
create index pet_price_sort_idx on pet (price, pet_id);
create index pet_created_at_sort_idx on pet (created_at, pet_id);

select trigger_updated_at('pet');
