-- `user` is a reserved word in PostgreSQL, hence `app_user`.
create table app_user
(
    user_id       uuid primary key     default gen_random_uuid(),
    username      text        not null,
    email         text        not null,
    -- argon2id PHC string; never leaves the database layer.
    password_hash text        not null,
    first_name    text,
    last_name     text,
    phone         text,
    role          text        not null default 'user' check (role in ('user', 'admin')),
    status        text        not null default 'active' check (status in ('active', 'disabled')),
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);

-- Case-insensitive uniqueness: `Alice` and `alice` are the same person to a human.
create unique index app_user_username_key on app_user (lower(username));
create unique index app_user_email_key on app_user (lower(email));
-- The admin listing pages by creation time.
create index app_user_created_at_idx on app_user (created_at, user_id);

select trigger_updated_at('app_user');
