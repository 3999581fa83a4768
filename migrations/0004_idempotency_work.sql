-- The paid work an Idempotency-Key opened, so that start-up recovery can store the refunded
-- answer for a key whose run a crash cut off (instead of a lasting "still running"), and an
-- index for forgetting keys after 24 hours.
alter table idempotency_keys add column work_id text;
create index idempotency_keys_work on idempotency_keys (work_id) where work_id is not null;
create index idempotency_keys_created on idempotency_keys (created_at);
