-- Durable event publication. A domain event is a row of `outbox`, inserted in the transaction
-- of the change it describes, so an event exists exactly when its change committed. A relay
-- (one node per topic at a time, under the lease in `outbox_relay`) appends the rows to the
-- topic's Redis log in `seq` order and deletes them once delivered.

-- One row per topic, the counter that numbers its events. A writer takes the next number with
-- `update ... set last_seq = last_seq + 1` as the last statement of its transaction: the row
-- lock it takes is held until commit, so the next writer of the topic gets its number only
-- after this one committed (or rolled back, returning the number). Numbers therefore follow
-- commit order and have no gaps, which an identity column would not give: a transaction that
-- drew id 7 can commit after one that drew id 8, and a relay that had read 8 would never see 7.
create table outbox_topic
(
    topic    text   primary key,
    last_seq bigint not null default 0
);

create table outbox
(
    topic       text        not null,
    -- The event's number in its topic, from outbox_topic.last_seq.
    seq         bigint      not null,
    event       text        not null,
    payload     jsonb       not null,
    -- The user the event concerns (an order's owner); null for public events.
    owner       text,
    -- The node whose transaction wrote the event.
    node_id     text        not null,
    -- The envelope's timestamp, Unix milliseconds, as clients see it.
    occurred_at bigint      not null,
    created_at  timestamptz not null default now(),
    primary key (topic, seq)
);

-- The relay of each topic, kept apart from outbox_topic so that renewing a lease never waits
-- for (or holds up) a writer's lock on the counter.
create table outbox_relay
(
    topic         text        primary key,
    -- The node relaying the topic, until lease_until; any node may take over after that.
    holder        text        not null,
    lease_until   timestamptz not null,
    -- Every event up to this number is in Redis (and its row deleted).
    delivered_seq bigint      not null default 0
);
