-- Users, their sign-in sessions (refresh token families) and the raits ledger.

create table users (
    id              text primary key,                -- UUID v7
    email           text not null collate nocase,
    hashed_password text,                            -- argon2id PHC string; null for OAuth-only users
    name            text,
    provider        text not null default 'local' check (provider in ('local', 'google', 'yandex')),
    provider_id     text,
    balance         integer not null default 0 check (balance >= 0),  -- raits
    is_active       integer not null default 1 check (is_active in (0, 1)),
    is_verified     integer not null default 0 check (is_verified in (0, 1)),
    is_admin        integer not null default 0 check (is_admin in (0, 1)),
    created_at      text not null,
    updated_at      text not null
);
create unique index users_email on users (email collate nocase);
create index users_provider on users (provider, provider_id);

-- One row per sign-in: the family of refresh tokens that rotate from it. Its id is the
-- access token's `sid` claim. Revoking it ends every token of the family.
create table auth_sessions (
    id             text primary key,                 -- UUID v7, the `sid` claim
    user_id        text not null references users (id) on delete cascade,
    revoked_at     text,
    revoked_reason text,
    created_at     text not null,
    updated_at     text not null
);
create index auth_sessions_user on auth_sessions (user_id);

-- Refresh tokens are opaque; only their SHA-256 is stored.
create table refresh_tokens (
    token_hash  blob primary key,
    session_id  text not null references auth_sessions (id) on delete cascade,
    expires_at  text not null,
    used_at     text,                                -- set when rotated
    created_at  text not null,
    updated_at  text not null
);
create index refresh_tokens_session on refresh_tokens (session_id);

-- The ledger: a user's balance always equals the sum of their rows' amounts.
create table transactions (
    id            text primary key,                  -- UUID v7
    user_id       text not null references users (id) on delete cascade,
    type          text not null check (type in ('topup', 'spend', 'refund', 'adjustment')),
    amount        integer not null check (amount <> 0),  -- signed raits
    balance_after integer not null check (balance_after >= 0),
    description   text,
    payment_id    text,
    -- What the row settles (a payment, a generation session): with `type` it is unique, so a
    -- retried webhook or a second refund cannot write the row twice.
    reference     text,
    created_at    text not null,
    updated_at    text not null
);
create index transactions_user on transactions (user_id, created_at desc, id desc);
create unique index transactions_reference on transactions (type, reference) where reference is not null;
