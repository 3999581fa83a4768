-- Sign-in identities at Google and Yandex, beside the user they sign in. One user may hold one
-- identity per provider (a Google and a Yandex one); `users.provider` stays how the account was
-- created.

create table user_identities (
    provider    text not null check (provider in ('google', 'yandex')),
    provider_id text not null,                       -- the provider's stable user id, as text
    user_id     text not null references users (id) on delete cascade,
    email       text,                                -- as the provider last reported it
    created_at  text not null,
    updated_at  text not null,
    primary key (provider, provider_id)
);
create unique index user_identities_user on user_identities (user_id, provider);

-- Accounts created by a provider before this table existed keep signing in to the same user.
-- (None should exist: OAuth sign-in arrives with this migration.)
insert into user_identities (provider, provider_id, user_id, email, created_at, updated_at)
select provider, provider_id, id, email, created_at, updated_at
from users
where provider in ('google', 'yandex') and provider_id is not null;
