-- The admin UI (CONTRACT §4 "Admin UI"): its own sign-in sessions, the audit log of every
-- action taken there, and the indexes its lists page and filter by.

-- A browser signed in at /admin. Only the SHA-256 of the cookie's random token is kept; the
-- CSRF token every form carries is the session's own.
create table admin_sessions (
    token_sha256 text primary key,
    user_id      text not null references users (id) on delete cascade,
    csrf         text not null,
    created_at   text not null,
    seen_at      text not null
);
create index admin_sessions_user on admin_sessions (user_id);

-- Who did what, when, to whom: one row per admin action.
create table admin_audit (
    id         text primary key,                     -- UUID v7
    admin_id   text references users (id) on delete set null,
    admin_email text not null,
    action     text not null,
    target     text,
    detail     text,
    created_at text not null
);
create index admin_audit_created on admin_audit (created_at desc, id desc);

-- Lists newest first over the whole table, and their filters.
create index users_created on users (created_at desc, id desc);
create index transactions_created on transactions (created_at desc, id desc);
create index generation_sessions_created on generation_sessions (created_at desc, id desc);
create index generation_sessions_tool on generation_sessions (tool_id, created_at desc);
create index images_created on images (created_at desc, id desc);
create index payments_created on payments (created_at desc, id desc);
create index payments_status on payments (status, created_at desc);
create index articles_created on articles (created_at desc, id desc);
