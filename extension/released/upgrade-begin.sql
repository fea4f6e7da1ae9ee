-- Every upgrade script starts here (extension/released/upgrade-begin.sql).
--
-- An upgrade runs the GRANTs and REVOKEs of sql/idempotent again, and PostgreSQL then
-- records each object's whole ACL, the user's own grants included, as the extension's
-- initial privileges (pg_init_privs). pg_dump leaves out what it takes for initial
-- privileges, so a dump of the upgraded database would lose the user's grants; and a
-- GRANT the release makes again would undo a user's REVOKE of it. Note here, by each member
-- object's identity (so an object an upgrade drops and creates again is matched), its ACL
-- and its initial privileges; upgrade-end.sql settles both. Both read the member objects
-- through pgvision._upgrade_members(), which lives only while the upgrade runs: created
-- here, dropped at the end of upgrade-end.sql.
CREATE OR REPLACE FUNCTION pgvision._upgrade_members()
RETURNS TABLE (classid oid, objid oid, objsubid int, target text, acl aclitem[], dflt aclitem[], identity text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $pgvision_upgrade$
    WITH ext AS (
        SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'pgvision'
    ), member AS (
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
        WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
          AND d.refobjid = (SELECT oid FROM ext) AND d.deptype = 'e'
    ), members AS (
        SELECT m.classid, m.objid, 0 AS objsubid,
               CASE c.relkind WHEN 'S' THEN 'ON SEQUENCE ' ELSE 'ON TABLE ' END
                   || pg_catalog.format('%I.%I', n.nspname, c.relname) AS target,
               COALESCE(c.relacl, pg_catalog.acldefault(
                   (CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner)) AS acl,
               pg_catalog.acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner) AS dflt
        FROM member m JOIN pg_catalog.pg_class c ON c.oid = m.objid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
        UNION ALL
        SELECT m.classid, m.objid, a.attnum,
               pg_catalog.format('(%I) ON TABLE %I.%I', a.attname, n.nspname, c.relname),
               a.attacl, NULL::aclitem[]
        FROM member m JOIN pg_catalog.pg_class c ON c.oid = m.objid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
        UNION ALL
        SELECT m.classid, m.objid, 0, 'ON ROUTINE ' || p.oid::pg_catalog.regprocedure::text,
               COALESCE(p.proacl, pg_catalog.acldefault('f'::"char", p.proowner)),
               pg_catalog.acldefault('f'::"char", p.proowner)
        FROM member m JOIN pg_catalog.pg_proc p ON p.oid = m.objid
        WHERE m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
        UNION ALL
        SELECT m.classid, m.objid, 0, pg_catalog.format('ON SCHEMA %I', n.nspname),
               COALESCE(n.nspacl, pg_catalog.acldefault('n'::"char", n.nspowner)),
               pg_catalog.acldefault('n'::"char", n.nspowner)
        FROM member m JOIN pg_catalog.pg_namespace n ON n.oid = m.objid
        WHERE m.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
        UNION ALL
        SELECT m.classid, m.objid, 0, 'ON TYPE ' || t.oid::pg_catalog.regtype::text,
               COALESCE(t.typacl, pg_catalog.acldefault('T'::"char", t.typowner)),
               pg_catalog.acldefault('T'::"char", t.typowner)
        FROM member m JOIN pg_catalog.pg_type t ON t.oid = m.objid
        WHERE m.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
    )
    SELECT m.*, o.type || ' ' || o.identity
    FROM members m
    CROSS JOIN LATERAL pg_catalog.pg_identify_object(m.classid, m.objid, m.objsubid) o
$pgvision_upgrade$;

DO $pgvision_upgrade$
BEGIN
    PERFORM pg_catalog.set_config('pgvision_upgrade.privileges', (
        SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'identity', m.identity,
                   'acl', m.acl::text[],
                   'base', COALESCE(i.initprivs, m.dflt)::text[],
                   'init', i.initprivs IS NOT NULL)), '[]')
        FROM pgvision._upgrade_members() m
        LEFT JOIN pg_catalog.pg_init_privs i
               ON i.classoid = m.classid AND i.objoid = m.objid AND i.objsubid = m.objsubid
              AND i.privtype = 'e')::text, true);
END
$pgvision_upgrade$;
