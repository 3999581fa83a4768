-- Single-use tokens mailed to a user: a password reset (valid 1 h) or an email verification
-- (24 h). Only the SHA-256 of a token is kept; using one marks it used in the same write, so a
-- token works once even when two requests race with it.

create table account_tokens (
    token_hash text primary key,                     -- SHA-256 of the token, lowercase hex
    user_id    text not null references users (id) on delete cascade,
    purpose    text not null check (purpose in ('reset', 'verify')),
    expires_at text not null,
    used_at    text,
    created_at text not null,
    updated_at text not null
);
create index account_tokens_user on account_tokens (user_id, purpose);
create index account_tokens_expires on account_tokens (expires_at);
