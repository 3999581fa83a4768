-- Top-ups (CONTRACT §4 "Payments"). A payment is opened `pending` before its provider is
-- asked; it is credited by one `topup` ledger row whose reference is
-- `<provider>:<external_id>`, in the same transaction that moves it to `completed`, so no
-- notification, replay or reconciliation can credit it twice.
create table payments (
    id               text primary key,               -- UUID v7
    -- Our integer number of the payment: Robokassa's `InvId`, an order number for people.
    number           integer not null unique check (number between 1 and 2147483647),
    user_id          text not null references users (id),
    provider         text not null
                     check (provider in ('yookassa', 'robokassa', 'cloudpayments', 'tbank')),
    status           text not null
                     check (status in ('pending', 'completed', 'failed', 'refunded')),
    amount_rub       integer not null check (amount_rub > 0),
    amount_kopecks   integer not null check (amount_kopecks = amount_rub * 100),
    amount_raits     integer not null check (amount_raits > 0),
    currency         text not null default 'RUB',
    external_id      text,                           -- the provider's id of the payment
    provider_status  text,                           -- the provider's own last status word
    payment_url      text,                           -- where the payer was sent
    test             integer not null default 0 check (test in (0, 1)),
    -- Provider refunds: what was returned to the payer, and the raits that could not be taken
    -- back because they were already spent (for the operator).
    refunded_kopecks integer not null default 0 check (refunded_kopecks >= 0),
    shortfall_raits  integer not null default 0 check (shortfall_raits >= 0),
    error            text,                           -- why it failed, for the operator
    checked_at       text,                           -- last asked its provider (reconciliation)
    created_at       text not null,
    updated_at       text not null,
    completed_at     text
);
create unique index payments_external on payments (provider, external_id)
    where external_id is not null;
create index payments_user on payments (user_id, created_at desc, id desc);
create index payments_pending on payments (created_at) where status = 'pending';

-- Refunds the providers reported, once each: the raits taken back (never below a zero
-- balance) and what could not be taken.
create table payment_refunds (
    provider        text not null,
    refund_id       text not null,
    payment_id      text not null references payments (id),
    amount_kopecks  integer not null check (amount_kopecks > 0),
    raits_debited   integer not null check (raits_debited >= 0),
    shortfall_raits integer not null check (shortfall_raits >= 0),
    created_at      text not null,
    primary key (provider, refund_id)
);

-- Every webhook call, with its verdict, for the admin UI; secrets and card tokens removed.
create table payment_webhooks (
    id          text primary key,                    -- UUID v7
    provider    text not null,
    payment_id  text,                                -- the payment it was about, when found
    remote_ip   text,
    method      text not null,
    headers     text not null,                       -- JSON object of the headers that matter
    body        text not null,                       -- redacted, at most 16 KiB
    verdict     text not null,                       -- credited, duplicate, rejected:forged, …
    detail      text,
    created_at  text not null
);
create index payment_webhooks_created on payment_webhooks (created_at desc);
create index payment_webhooks_payment on payment_webhooks (payment_id) where payment_id is not null;
