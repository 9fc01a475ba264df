-- Search: every business identifier of the current version of each resource (several resources
-- of a sector may carry the same identifier, so a conditional create can tell one match from
-- two), and the index of `_lastUpdated` windows per type.
CREATE TABLE identifier_index (
    sector  TEXT NOT NULL,
    rtype   TEXT NOT NULL,
    system  TEXT NOT NULL,
    value   TEXT NOT NULL,
    gid     TEXT NOT NULL,
    PRIMARY KEY (rtype, system, value, gid)
);
CREATE INDEX identifier_index_gid ON identifier_index (gid);

INSERT INTO identifier_index (sector, rtype, system, value, gid)
    SELECT sector, rtype, system, value, gid FROM resource_identifiers;

CREATE INDEX resources_type_updated ON resources (rtype, last_updated);
