-- carebridge audit transparency schema (PostgreSQL dialect; migrations/sqlite holds the same schema).

-- The Merkle tree over the audit chain (RFC 9162 hashing): the hash of every complete subtree,
-- `level` 0 holding the leaf hashes (leaf i = the row with seq i + 1). A node is written once,
-- when its subtree fills; appending a row writes one leaf and at most one node per level.
-- Roots and proofs for any tree size are combined from these nodes. A prune deletes rows,
-- never nodes: every proof stays computable.
CREATE TABLE audit_merkle (
    level BIGINT NOT NULL,
    idx   BIGINT NOT NULL,
    hash  BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);

-- Signed checkpoints (C2SP signed notes: origin, tree size, root hash), one per signed size.
CREATE TABLE audit_checkpoints (
    size      BIGINT PRIMARY KEY,
    root      BYTEA NOT NULL,
    note      TEXT NOT NULL,
    signed_us BIGINT NOT NULL
);

-- What each configured witness holds: the size of the last checkpoint it countersigned, its
-- cosignature, and when the next push is due after a failure.
CREATE TABLE audit_witnesses (
    url        TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    cosigned   TEXT,
    failures   BIGINT NOT NULL,
    next_us    BIGINT NOT NULL,
    last_error TEXT
);
