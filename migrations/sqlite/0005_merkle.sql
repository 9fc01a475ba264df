-- carebridge audit transparency schema (SQLite dialect; migrations/postgres holds the same schema).

-- The Merkle tree over the audit chain (RFC 9162 hashing): the hash of every complete subtree,
-- `level` 0 holding the leaf hashes (leaf i = the row with seq i + 1). A node is written once,
-- when its subtree fills; appending a row writes one leaf and at most one node per level.
-- Roots and proofs for any tree size are combined from these nodes. A prune deletes rows,
-- never nodes: every proof stays computable.
CREATE TABLE audit_merkle (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Signed checkpoints (C2SP signed notes: origin, tree size, root hash), one per signed size.
CREATE TABLE audit_checkpoints (
    size      INTEGER PRIMARY KEY,
    root      BLOB NOT NULL,
    note      TEXT NOT NULL,
    signed_us INTEGER NOT NULL
);

-- What each configured witness holds: the size of the last checkpoint it countersigned, its
-- cosignature, and when the next push is due after a failure.
CREATE TABLE audit_witnesses (
    url        TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    cosigned   TEXT,
    failures   INTEGER NOT NULL,
    next_us    INTEGER NOT NULL,
    last_error TEXT
);
