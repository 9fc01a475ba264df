-- carebridge exchange schema (SQLite dialect; migrations/postgres holds the same schema).

-- The durable outbox: one row per (target sector, resource version) to deliver, written in the
-- same transaction as the accepted resource. `state`: pending, delivered, dead (dead letter),
-- superseded (a later version reached the target first). A worker holds an entry while it
-- delivers it through `lease_owner`/`lease_until_us`.
CREATE TABLE outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    target         TEXT NOT NULL,
    source         TEXT NOT NULL,
    gid            TEXT NOT NULL,
    version        INTEGER NOT NULL,
    rtype          TEXT NOT NULL,
    patient_id     TEXT,
    route          TEXT NOT NULL,
    state          TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    created_us     INTEGER NOT NULL,
    next_us        INTEGER NOT NULL,
    updated_us     INTEGER NOT NULL,
    lease_owner    TEXT,
    lease_until_us INTEGER,
    last_status    INTEGER,
    last_error     TEXT,
    target_id      TEXT,
    target_version TEXT,
    UNIQUE (target, gid, version)
);
CREATE INDEX outbox_queue ON outbox (target, state, id);
CREATE INDEX outbox_resource ON outbox (target, gid, state, id);
CREATE INDEX outbox_state ON outbox (state, id);

-- Per target sector, the id (and version) each delivered resource got there, and the hash of
-- what was sent: references are rewritten with it, updates go to it, and the poller recognises
-- its own deliveries (echo suppression).
CREATE TABLE delivered (
    target         TEXT NOT NULL,
    gid            TEXT NOT NULL,
    rtype          TEXT NOT NULL,
    target_id      TEXT NOT NULL,
    target_version TEXT,
    version        INTEGER NOT NULL,
    hash           TEXT NOT NULL,
    delivered_us   INTEGER NOT NULL,
    PRIMARY KEY (target, gid)
);
CREATE INDEX delivered_target_id ON delivered (target, rtype, target_id);

-- Pull mode: per sector and type, the last `meta.lastUpdated` read and the versions read at
-- exactly that instant (so that equal timestamps at a page boundary are neither lost nor re-read).
CREATE TABLE poll_cursors (
    sector      TEXT NOT NULL,
    rtype       TEXT NOT NULL,
    since       TEXT NOT NULL,
    seen        TEXT NOT NULL,
    updated_us  INTEGER NOT NULL,
    PRIMARY KEY (sector, rtype)
);

-- Leases: one replica at a time holds a named job (the poller of a sector).
CREATE TABLE leases (
    name      TEXT PRIMARY KEY,
    owner     TEXT NOT NULL,
    until_us  INTEGER NOT NULL
);

-- Pulled resources that failed validation: kept, reported, never forwarded.
CREATE TABLE quarantine (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sector       TEXT NOT NULL,
    rtype        TEXT NOT NULL,
    rid          TEXT NOT NULL,
    version_id   TEXT,
    received_us  INTEGER NOT NULL,
    body         TEXT NOT NULL,
    issues       TEXT NOT NULL
);

-- Business identifiers looked up across sectors (Communication recipients).
CREATE INDEX resource_identifiers_value ON resource_identifiers (rtype, system, value);
