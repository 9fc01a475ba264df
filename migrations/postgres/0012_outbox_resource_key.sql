-- The outbox's resource key led by the gateway id (issue 17). Three of the outbox's indexes were
-- keyed by the resource: the key (target, gid, version), `outbox_resource` (target, gid, state,
-- id) for "the entries of this resource for this target" and `outbox_gid` (gid, id) for the
-- message browser's search by resource. Gateway ids are hashes, so every new entry landed on a
-- different page of each. One key (gid, target, version) serves all three lookups: a resource
-- has a handful of entries per target, which the key finds and the row filters by state and
-- orders by id. `ON CONFLICT (target, gid, version)` names columns, not an order, and still
-- finds this key.
CREATE UNIQUE INDEX outbox_resource_key ON outbox (gid, target, version);
ALTER TABLE outbox DROP CONSTRAINT outbox_target_gid_version_key;
DROP INDEX outbox_resource;
DROP INDEX outbox_gid;
