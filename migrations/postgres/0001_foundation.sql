-- carebridge foundation schema (PostgreSQL dialect; migrations/sqlite holds the same schema).

-- One row per gateway patient: the person behind the sectors' Patient resources.
CREATE TABLE patients (
    id          TEXT PRIMARY KEY,
    created_us  BIGINT NOT NULL
);

-- Identifiers that link sector Patients to a gateway patient (CPR numbers, replacement CPRs,
-- and one `urn:carebridge:sector-patient:<sector>` key per sector Patient).
CREATE TABLE patient_identifiers (
    system      TEXT NOT NULL,
    value       TEXT NOT NULL,
    patient_id  TEXT NOT NULL,
    PRIMARY KEY (system, value)
);
CREATE INDEX patient_identifiers_patient ON patient_identifiers (patient_id);

-- A gateway patient that was merged into another one keeps resolving to the survivor.
CREATE TABLE patient_merges (
    from_id     TEXT PRIMARY KEY,
    into_id     TEXT NOT NULL,
    merged_us   BIGINT NOT NULL
);

-- The current version of each sector resource.
CREATE TABLE resources (
    gid          TEXT PRIMARY KEY,
    sector       TEXT NOT NULL,
    rtype        TEXT NOT NULL,
    rid          TEXT NOT NULL,
    version      BIGINT NOT NULL,
    hash         TEXT NOT NULL,
    patient_ref  TEXT,
    patient_id   TEXT,
    last_updated TEXT NOT NULL,
    UNIQUE (sector, rtype, rid)
);
CREATE INDEX resources_patient ON resources (patient_id, rtype);
CREATE INDEX resources_patient_ref ON resources (sector, patient_ref);

-- Every version of every sector resource, exactly as accepted.
CREATE TABLE resource_versions (
    gid          TEXT NOT NULL,
    version      BIGINT NOT NULL,
    hash         TEXT NOT NULL,
    body         TEXT NOT NULL,
    received_us  BIGINT NOT NULL,
    last_updated TEXT NOT NULL,
    PRIMARY KEY (gid, version)
);

-- Business identifiers of sector resources, for conditional create and references.
CREATE TABLE resource_identifiers (
    sector  TEXT NOT NULL,
    rtype   TEXT NOT NULL,
    system  TEXT NOT NULL,
    value   TEXT NOT NULL,
    gid     TEXT NOT NULL,
    PRIMARY KEY (sector, rtype, system, value)
);

-- The audit record: appended in the same transaction as what it records, never updated.
-- The information-sharing log: append-only and hash-chained. `seq` is assigned by the gateway
-- (one chain, gapless, under a lock); `hash` is SHA-256 over the row's canonical content and
-- `prev_hash`; a `checkpoint` row records where a pruned segment ended.
CREATE TABLE audit_log (
    seq          BIGINT PRIMARY KEY,
    kind         TEXT NOT NULL,
    recorded_us  BIGINT NOT NULL,
    recorded     TEXT NOT NULL,
    request_id   TEXT,
    client_id    TEXT,
    role         TEXT,
    sector       TEXT,
    target_sector TEXT,
    action       TEXT NOT NULL,
    interaction  TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    patient_id   TEXT,
    entities     TEXT NOT NULL,
    query        TEXT,
    purpose      TEXT,
    detail       TEXT,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);
CREATE INDEX audit_log_patient ON audit_log (patient_id, recorded_us);
CREATE INDEX audit_log_recorded ON audit_log (recorded_us);
CREATE INDEX audit_log_client ON audit_log (client_id, recorded_us);

-- The chain's head: the last row's seq and hash, updated with every append. A truncated tail
-- (rows deleted from the end) leaves the head pointing past the last row.
CREATE TABLE audit_head (
    chain TEXT PRIMARY KEY,
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);

-- While `carebridge audit prune` runs, the rows up to `upto` may be deleted; nothing else may
-- update or delete an audit row.
CREATE TABLE audit_prune_permit (
    upto BIGINT NOT NULL
);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM audit_prune_permit WHERE OLD.seq <= upto) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
