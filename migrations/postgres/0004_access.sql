-- Access by treatment relationship (Sundhedsloven § 42 a): the basis of every access is
-- audited, break-the-glass grants are kept for their time and for the auditor's review, and the
-- look-ups that decide a relationship are indexed.

-- Why access was granted (or, with a failure outcome, refused): `care-team CareTeam/<gid>`,
-- `exchange <sector> <Type>/<gid>`, `launch`, `break-glass <grant id>`, `own-sector <id>`, …
-- Older rows have none; the row hash covers it only when it is set.
ALTER TABLE audit_log ADD COLUMN basis TEXT;
-- The person acting through the client (`system|value` of their practitioner identifier).
ALTER TABLE audit_log ADD COLUMN person TEXT;

-- One break-the-glass grant: one person (or client), one gateway patient, until `expires_us`.
-- The review fields are set once, by an auditor.
CREATE TABLE break_glass (
    id              TEXT PRIMARY KEY,
    grantee         TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    patient_id      TEXT NOT NULL,
    reason          TEXT NOT NULL,
    reason_text     TEXT NOT NULL,
    granted_us      BIGINT NOT NULL,
    expires_us      BIGINT NOT NULL,
    overrides_block BIGINT NOT NULL,
    reviewed_us     BIGINT,
    reviewer        TEXT,
    review_note     TEXT
);
CREATE INDEX break_glass_grantee ON break_glass (grantee, patient_id, expires_us);
CREATE INDEX break_glass_review ON break_glass (reviewed_us, granted_us);

-- The newest record a sector sent about a patient.
CREATE INDEX resources_patient_sector ON resources (patient_id, sector, last_updated);
-- The newest delivery to a sector about a patient.
CREATE INDEX outbox_patient ON outbox (patient_id, target, updated_us);
