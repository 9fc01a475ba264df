-- The outbox's resource key led by the gateway id (issue 17). Three of the outbox's indexes were
-- keyed by the resource: the key (target, gid, version), `outbox_resource` (target, gid, state,
-- id) for "the entries of this resource for this target" and `outbox_gid` (gid, id) for the
-- message browser's search by resource. Gateway ids are hashes, so every new entry landed on a
-- different page of each. One key (gid, target, version) serves all three lookups: a resource
-- has a handful of entries per target, which the key finds and the row filters by state and
-- orders by id. `ON CONFLICT (target, gid, version)` names columns, not an order, and still
-- finds this key. SQLite changes a table's constraint only by building the table again; ids
-- are kept, and so is the highest id ever given (AUTOINCREMENT never hands one out twice).
CREATE TABLE outbox_rebuilt (
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
    UNIQUE (gid, target, version)
);
INSERT INTO outbox_rebuilt (id, target, source, gid, version, rtype, patient_id, route, state,
        attempts, created_us, next_us, updated_us, lease_owner, lease_until_us, last_status,
        last_error, target_id, target_version)
    SELECT id, target, source, gid, version, rtype, patient_id, route, state, attempts,
           created_us, next_us, updated_us, lease_owner, lease_until_us, last_status, last_error,
           target_id, target_version
    FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_rebuilt';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_rebuilt', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_rebuilt RENAME TO outbox;
CREATE INDEX outbox_queue ON outbox (target, state, id);
CREATE INDEX outbox_state ON outbox (state, id);
CREATE INDEX outbox_patient ON outbox (patient_id, target, updated_us);
CREATE INDEX outbox_type ON outbox (rtype, id);
CREATE INDEX outbox_created ON outbox (created_us, id);
