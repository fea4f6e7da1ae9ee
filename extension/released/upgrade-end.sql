-- Every upgrade script ends here (extension/released/upgrade-end.sql); upgrade-begin.sql
-- says why. For each member object that was there before the upgrade, and for each
-- privilege (grantor, grantee, privilege, grant option):
--   - where the user had changed what the release granted (a GRANT of their own, a REVOKE of
--     the release's), the user's choice stands, even when the upgrade dropped and created
--     the object again or ran the release's GRANT or REVOKE again;
--   - the initial privileges become what the upgrade changed, and stay as they were where it
--     changed nothing, so pg_dump goes on dumping the user's grants.
DO $pgvision_upgrade$
DECLARE
    r record;
    g record;
    _init aclitem[];
    _default boolean;
BEGIN
    FOR r IN
        SELECT b.acl::aclitem[] AS before, b.base::aclitem[] AS base, b.init,
               m.classid, m.objid, m.objsubid, m.target, m.acl AS now, m.dflt
        FROM pg_catalog.jsonb_to_recordset(pg_catalog.current_setting('pgvision_upgrade.privileges')::jsonb)
             AS b(identity text, acl text[], base text[], init boolean)
        JOIN pgvision._upgrade_members() m ON m.identity = b.identity
    LOOP
        FOR g IN
            SELECT 'GRANT' AS verb, x.* FROM (
                (SELECT * FROM pg_catalog.aclexplode(r.before)
                 EXCEPT SELECT * FROM pg_catalog.aclexplode(r.base))
                EXCEPT SELECT * FROM pg_catalog.aclexplode(r.now)) x
            UNION ALL
            SELECT 'REVOKE', y.* FROM (
                (SELECT * FROM pg_catalog.aclexplode(r.base)
                 INTERSECT SELECT * FROM pg_catalog.aclexplode(r.now))
                EXCEPT SELECT * FROM pg_catalog.aclexplode(r.before)) y
            ORDER BY 1 DESC
        LOOP
            BEGIN
                EXECUTE pg_catalog.format('%s %s %s %s %s%s', g.verb, g.privilege_type, r.target,
                    CASE g.verb WHEN 'GRANT' THEN 'TO' ELSE 'FROM' END,
                    CASE g.grantee WHEN 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::text END,
                    CASE WHEN g.verb = 'GRANT' AND g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'pgvision upgrade could not keep % % % for %: %', g.verb,
                    g.privilege_type, r.target, g.grantee::pg_catalog.regrole, SQLERRM;
            END;
        END LOOP;

        WITH b AS (SELECT * FROM pg_catalog.aclexplode(r.before)),
             n AS (SELECT * FROM pg_catalog.aclexplode(r.now)),
             s AS (SELECT * FROM pg_catalog.aclexplode(r.base)),
             i AS ((SELECT * FROM s INTERSECT SELECT * FROM b INTERSECT SELECT * FROM n)
                   UNION ((SELECT * FROM s EXCEPT SELECT * FROM b) EXCEPT SELECT * FROM n)
                   UNION (SELECT * FROM n EXCEPT SELECT * FROM b)),
             d AS (SELECT * FROM pg_catalog.aclexplode(r.dflt))
        SELECT (SELECT pg_catalog.array_agg(pg_catalog.format('%s=%s/%s',
                           CASE z.grantee WHEN 0 THEN '' ELSE z.grantee::pg_catalog.regrole::text END,
                           z.privs, z.grantor::pg_catalog.regrole)::aclitem)
                FROM (SELECT i.grantee, i.grantor, pg_catalog.string_agg(
                          CASE i.privilege_type
                              WHEN 'INSERT' THEN 'a' WHEN 'SELECT' THEN 'r' WHEN 'UPDATE' THEN 'w'
                              WHEN 'DELETE' THEN 'd' WHEN 'TRUNCATE' THEN 'D' WHEN 'REFERENCES' THEN 'x'
                              WHEN 'TRIGGER' THEN 't' WHEN 'EXECUTE' THEN 'X' WHEN 'USAGE' THEN 'U'
                              WHEN 'CREATE' THEN 'C' WHEN 'TEMPORARY' THEN 'T' WHEN 'CONNECT' THEN 'c'
                              WHEN 'SET' THEN 's' WHEN 'ALTER SYSTEM' THEN 'A' END
                          || CASE WHEN i.is_grantable THEN '*' ELSE '' END, '') AS privs
                      FROM i GROUP BY i.grantee, i.grantor) z),
               NOT EXISTS (SELECT * FROM i EXCEPT SELECT * FROM d)
               AND NOT EXISTS (SELECT * FROM d EXCEPT SELECT * FROM i)
          INTO _init, _default;

        DELETE FROM pg_catalog.pg_init_privs p
        WHERE p.objoid = r.objid AND p.classoid = r.classid AND p.objsubid = r.objsubid;
        IF r.init OR NOT _default THEN
            INSERT INTO pg_catalog.pg_init_privs (objoid, classoid, objsubid, privtype, initprivs)
            VALUES (r.objid, r.classid, r.objsubid, 'e', COALESCE(_init, '{}'));
        END IF;
    END LOOP;
END
$pgvision_upgrade$;

DROP FUNCTION pgvision._upgrade_members();
