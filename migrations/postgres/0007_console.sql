-- The care team's console (PostgreSQL dialect; migrations/sqlite holds the same schema).

-- The inbox's order and filters as columns, so that the store returns a page of open alerts
-- in order (severity, then age) instead of every alert: `severity_rank` (0 high, 1 moderate,
-- 2 low) and `sectors` (the implicated records' sectors as `,gp,hospital,`) are derived from
-- the DetectedIssue body on every write (`store::alerts`); a snooze hides an open alert from
-- the default inbox until `snoozed_until_us` (0: not snoozed); any change of the alert ends it.
ALTER TABLE alerts ADD COLUMN severity_rank BIGINT NOT NULL DEFAULT 2;
ALTER TABLE alerts ADD COLUMN sectors TEXT NOT NULL DEFAULT ',';
ALTER TABLE alerts ADD COLUMN snoozed_until_us BIGINT NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN snoozed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE alerts ADD COLUMN snooze_note TEXT NOT NULL DEFAULT '';

UPDATE alerts SET
    severity_rank = CASE body::json->>'severity'
        WHEN 'high' THEN 0 WHEN 'moderate' THEN 1 ELSE 2 END,
    sectors = ',' || COALESCE((
        SELECT string_agg(split_part(e->>'display', ' ', 1), ',')
        FROM json_array_elements(COALESCE(body::json->'implicated', '[]'::json)) AS e
        WHERE position(' ' IN COALESCE(e->>'display', '')) > 1) || ',', '');

CREATE INDEX alerts_inbox ON alerts (is_open, severity_rank, created_us, id);
-- The same order within one alert code (the inbox's code filter: a range read, not a scan).
CREATE INDEX alerts_inbox_code ON alerts (code, is_open, severity_rank, created_us, id);

-- Every lifecycle change of an alert, written in the transaction that makes it (under the
-- patient's alert lock): raised, updated (amended: the new detail and implicated records),
-- acknowledged, snoozed, closed, reopened. Never updated; the alert detail page reads it in
-- `seq` order (1, 2, … per alert).
CREATE TABLE alert_history (
    alert_id    TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    at_us       BIGINT NOT NULL,
    author      TEXT NOT NULL,
    note        TEXT NOT NULL,
    detail      TEXT NOT NULL,
    implicated  TEXT NOT NULL,
    PRIMARY KEY (alert_id, seq)
);

-- The console's sign-in state, shared by every replica on the database: sessions (by the
-- SHA-256 of the cookie value; the signed-in client as JSON, the CSRF token, when last used —
-- a session unused for `[ui] session_idle_minutes` is over) and one-time values (`kind`
-- `link`: a sign-in link's hash → the client; `state`: an OpenID Connect `state`'s hash → the
-- PKCE verifier), each taken once (deleted when used) or dropped when expired.
CREATE TABLE console_sessions (
    key          TEXT PRIMARY KEY,
    client       TEXT NOT NULL,
    csrf         TEXT NOT NULL,
    last_used_us BIGINT NOT NULL
);
CREATE INDEX console_sessions_last_used ON console_sessions (last_used_us);

CREATE TABLE console_once (
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    expires_us  BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
