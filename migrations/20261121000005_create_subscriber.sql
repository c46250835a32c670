-- Custom WebSocket events: an admin registers an event name, and clients may then emit it over
-- the WebSocket. `replicable` events are re-broadcast to the sender's room.
create table subscriber
(
    subscriber_id  uuid primary key     default gen_random_uuid(),
    event_listener text        not null,
    replicable     boolean     not null default false,
    description    text,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    -- Named, so the node can map a duplicate to 409 and a rejected value to 400.
    constraint subscriber_event_listener_key unique (event_listener),
    -- The same rule as `subscribers::validate_event_listener`, so no other writer can store a
    -- name the WebSocket protocol already uses (its actions and events) or one the API would
    -- refuse. Keep the two in step.
    constraint subscriber_event_listener_check check (
        char_length(event_listener) between 1 and 100
        and event_listener ~ '^[A-Za-z][A-Za-z0-9_.:-]*$'
        and event_listener not in ('ping', 'subscribe', 'unsubscribe')
        and event_listener !~ '^(auth|room|system|pet|order):'
        and event_listener !~ '^(pets|orders|inventory)\.'
    ),
    constraint subscriber_description_check check (char_length(description) <= 500)
);

select trigger_updated_at('subscriber');
