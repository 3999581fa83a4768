-- Generation sessions (one per tool execution) and idempotency keys for retried POSTs.

create table generation_sessions (
    id            text primary key,                  -- UUID v7
    user_id       text not null references users (id) on delete cascade,
    tool_id       text not null,
    mode          text not null check (mode in ('quick', 'standard')),
    status        text not null check (status in ('pending', 'in_progress', 'completed', 'failed')),
    input_data    text not null,                     -- JSON
    result        text,                              -- JSON: a string for text tools, an object for image tools
    provider_used text,
    tokens_used   integer not null default 0,
    cost_raits    integer not null check (cost_raits >= 0),
    error_code    text,
    error_message text,
    created_at    text not null,
    updated_at    text not null,
    completed_at  text
);
create index generation_sessions_user on generation_sessions (user_id, created_at desc, id desc);
create index generation_sessions_status on generation_sessions (status) where status in ('pending', 'in_progress');

-- The first answer to a POST with an Idempotency-Key, replayed for 24 hours.
create table idempotency_keys (
    user_id         text not null references users (id) on delete cascade,
    key             text not null,
    request_hash    text not null,                   -- method, path and body, so a reused key with another request is refused
    response_status integer,                         -- null while the first request is still running
    response_body   text,
    created_at      text not null,
    updated_at      text not null,
    primary key (user_id, key)
);
