-- Pet images (`POST /api/v1/pets/{id}/uploadImage`). Kept in PostgreSQL, beside the pet, so
-- that every node serves every image and an upload commits with the `photoUrls` entry that
-- points at it. Images never change: a new upload is a new row, so its URL can be cached
-- forever.
create table pet_image
(
    image_id     bigint generated always as identity primary key,
    -- An image without its pet is unreachable: it goes with the pet.
    pet_id       bigint      not null references pet (pet_id) on delete cascade,
    content_type text        not null check (content_type in ('image/png', 'image/jpeg', 'image/webp', 'image/gif')),
    byte_size    integer     not null check (byte_size > 0),
    -- Hex SHA-256 of `data`: the strong ETag.
    sha256       text        not null,
    data         bytea       not null,
    created_at   timestamptz not null default now()
);

create index pet_image_pet_id_idx on pet_image (pet_id);
