-- Images a user generated (CONTRACT §4 "Images"): one row per picture, paid for up front by a
-- `spend` whose reference is the image id (an image made by an image tool through execute is
-- paid by its generation session instead, and links to it). The files live under
-- <data dir>/uploads/ at the relative paths stored here.
create table images (
    id              text primary key,                -- UUID v7
    user_id         text not null references users (id) on delete cascade,
    session_id      text references generation_sessions (id) on delete set null,
    prompt          text not null,
    negative_prompt text,
    style           text,
    format          text not null check (format in ('web', 'banner', 'print', 'messenger')),
    width           integer not null,                -- delivered size
    height          integer not null,
    status          text not null check (status in ('processing', 'completed', 'failed')),
    provider        text,
    cost_raits      integer not null check (cost_raits >= 0),
    file            text,                            -- relative to the uploads directory
    error_code      text,
    error_message   text,
    -- An extra upscale of a completed image: a paid job of its own on the same row.
    upscale_id      text unique,                     -- the upscale's spend reference
    upscale_status  text check (upscale_status in ('processing', 'completed', 'failed')),
    upscale_scale   integer check (upscale_scale in (2, 4)),
    upscale_cost    integer not null default 0 check (upscale_cost >= 0),
    upscaled_file   text,
    upscaled_width  integer,
    upscaled_height integer,
    created_at      text not null,
    updated_at      text not null,
    completed_at    text
);
create index images_user on images (user_id, created_at desc, id desc);
create index images_processing on images (status) where status = 'processing';
create index images_upscaling on images (upscale_status) where upscale_status = 'processing';
