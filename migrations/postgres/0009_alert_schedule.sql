-- carebridge alert schedule (PostgreSQL dialect; migrations/sqlite holds the same schema).

-- Time-driven evaluation: when a patient's time-based alerts (an unanswered message, a needs
-- assessment that runs out, an order whose validity ends) may change by time alone. One row per
-- patient and rule with the earliest due time, written in the transaction that evaluated the
-- patient (replaced at every evaluation); each replica claims due rows, re-evaluates the patient
-- and deletes them in one transaction (PostgreSQL: FOR UPDATE SKIP LOCKED).
CREATE TABLE alert_schedule (
    patient_id  TEXT NOT NULL,
    rule        TEXT NOT NULL,
    due_us      BIGINT NOT NULL,
    PRIMARY KEY (patient_id, rule)
);
CREATE INDEX alert_schedule_due ON alert_schedule (due_us);
