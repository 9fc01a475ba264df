-- carebridge operations schema (SQLite dialect; migrations/postgres holds the same schema).

-- Per delivery target, the endpoint's health as the delivery workers saw it: `state` healthy or
-- failing (raised once after `exchange.failing_after_failures` consecutive failed attempts or
-- an oldest waiting entry older than `exchange.failing_after_age_secs`; cleared once at the
-- next delivery), the failure streak, and the last attempt's status and reason (issue codes and
-- locations only, never diagnostics). Written in the transaction that records each outcome.
CREATE TABLE sector_health (
    target           TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    streak           INTEGER NOT NULL,
    since_us         INTEGER NOT NULL,
    last_attempt_us  INTEGER NOT NULL,
    last_success_us  INTEGER,
    last_failure_us  INTEGER,
    last_status      INTEGER,
    last_error       TEXT
);

-- Attempts per target and hour (deliveries and failures of the last 24 hours on the IT board).
CREATE TABLE sector_attempts (
    target     TEXT NOT NULL,
    hour_us    INTEGER NOT NULL,
    delivered  INTEGER NOT NULL,
    failed     INTEGER NOT NULL,
    PRIMARY KEY (target, hour_us)
);

-- The message browser searches the outbox by metadata: resource id, type and time.
CREATE INDEX outbox_gid ON outbox (gid, id);
CREATE INDEX outbox_type ON outbox (rtype, id);
CREATE INDEX outbox_created ON outbox (created_us, id);
