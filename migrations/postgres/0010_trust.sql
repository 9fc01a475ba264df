-- Patient identity that one message cannot merge (issue 20).

-- What the merged patient held when it was merged (a JSON array of [system, value]), so that
-- `carebridge patients unmerge` can give it back.
ALTER TABLE patient_merges ADD COLUMN moved_identifiers TEXT NOT NULL DEFAULT '[]';

-- Writes held for review: they would have joined two gateway patients. `entries` is the write
-- as the pipeline applies it (a JSON array of entries), `patients` the gateway patients it
-- would have joined; `state` is held, released or rejected.
CREATE TABLE held_writes (
    id           BIGSERIAL PRIMARY KEY,
    sector       TEXT NOT NULL,
    interaction  TEXT NOT NULL,
    client_id    TEXT,
    entries      TEXT NOT NULL,
    reason       TEXT NOT NULL,
    patients     TEXT NOT NULL,
    held_us      BIGINT NOT NULL,
    state        TEXT NOT NULL,
    decided_us   BIGINT,
    decided_by   TEXT
);
CREATE INDEX held_writes_state ON held_writes (state, id);
