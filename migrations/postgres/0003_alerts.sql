-- carebridge alerts schema (PostgreSQL dialect; migrations/sqlite holds the same schema).

-- One row per finding per patient (fingerprint): raised once, updated when its evidence
-- changes, closed when its cause disappears, reopened when it comes back. `body` is the
-- DetectedIssue as served.
CREATE TABLE alerts (
    id          TEXT PRIMARY KEY,
    patient_id  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    code        TEXT NOT NULL,
    status      TEXT NOT NULL,
    is_open     BIGINT NOT NULL,
    evidence    TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_us  BIGINT NOT NULL,
    updated_us  BIGINT NOT NULL,
    body        TEXT NOT NULL,
    UNIQUE (patient_id, fingerprint)
);
CREATE INDEX alerts_patient ON alerts (patient_id, is_open);
CREATE INDEX alerts_code ON alerts (code, is_open);
