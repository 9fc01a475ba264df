-- `resources` without its UNIQUE (sector, rtype, rid) (issue 17). The gateway id is derived from
-- exactly those three (`ids::gateway_id`) and is the primary key, so the constraint could never
-- refuse a row the key would accept, and every read by sector, type and id goes through the
-- gateway id. Its index was the most expensive of a Bundle's writes: keyed by sector-local ids
-- (random UUIDs in most sector systems), each new resource landed on a different page of it.
ALTER TABLE resources DROP CONSTRAINT resources_sector_rtype_rid_key;
