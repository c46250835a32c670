-- Refresh tokens are opaque random strings; only their SHA-256 is stored, so a database leak
-- does not leak sessions. Each login starts a family; every refresh spends one token and adds the
-- next to the same family. Presenting a spent token means it was stolen (or replayed), so the
-- whole family is revoked.
create table refresh_token
(
    refresh_token_id  uuid primary key     default gen_random_uuid(),
    user_id           uuid        not null references app_user (user_id) on delete cascade,
    family_id         uuid        not null,
    token_hash        bytea       not null unique,
    -- The access token issued together with this refresh token: logout revokes both, and
    -- revoking a family also revokes the access tokens it handed out that are still alive.
    access_jti        uuid        not null,
    access_expires_at timestamptz not null,
    expires_at        timestamptz not null,
    used_at           timestamptz,
    revoked_at        timestamptz,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now()
);

create index refresh_token_family_idx on refresh_token (family_id);
create index refresh_token_user_idx on refresh_token (user_id) where revoked_at is null;
create unique index refresh_token_access_jti_key on refresh_token (access_jti);

select trigger_updated_at('refresh_token');
