-- WordPress sites and their articles (CONTRACT §1 `site …`, §4 "WordPress plugin").
-- A site signs in with its access password (only the SHA-256 of a 256-bit random secret is
-- kept). With an owner, the site's articles are paid from the owner's raits; without, it is
-- the operator's own and its articles cost nothing.
create table sites (
    id              text primary key,                -- UUID v7
    domain          text not null collate nocase unique,
    name            text,
    owner_user_id   text references users (id) on delete set null,
    password_sha256 text not null unique,            -- hex
    created_at      text not null,
    updated_at      text not null
);
create index sites_owner on sites (owner_user_id) where owner_user_id is not null;

-- One row per article: a standard-mode run of the seo_article tool, paid (when the site has
-- an owner) by a `spend` whose reference is the article id, refunded by a `refund` with the
-- same reference when it fails. A deleted site leaves its articles, detached.
create table articles (
    id              text primary key,                -- UUID v7
    site_id         text references sites (id) on delete set null,
    owner_user_id   text references users (id) on delete set null,  -- who paid; null: the operator
    session_id      text not null,                   -- the batch the plugin named
    title           text not null,
    keywords        text not null,                   -- JSON array of strings
    language        text not null,
    length          text not null check (length in ('short', 'medium', 'long')),
    status          text not null
                    check (status in ('pending', 'in_progress', 'completed', 'failed', 'published')),
    markdown        text,
    content         text,                            -- sanitised HTML for the post
    provider_used   text,
    tokens_used     integer not null default 0 check (tokens_used >= 0),
    cost_raits      integer not null default 0 check (cost_raits >= 0),
    wp_post_id      integer check (wp_post_id > 0),
    url             text,
    error_code      text,
    error_message   text,
    created_at      text not null,
    updated_at      text not null,
    completed_at    text,
    published_at    text
);
-- Lists (newest first, by batch, by status) and statistics (by day) of one site.
create index articles_site on articles (site_id, created_at desc, id desc);
create index articles_site_session on articles (site_id, session_id, created_at desc, id desc);
create index articles_site_status on articles (site_id, status, created_at desc, id desc);
-- Start-up recovery.
create index articles_unsettled on articles (status) where status in ('pending', 'in_progress');
