-- Built-in models and pipelines, and who may use what. Runs on install and on every upgrade.

SELECT pgvision._install_builtin_models();

-- AnalyticDB's extractor: embed(image) as JSON, with the install's default model (an
-- updated database's row stays as it was)
INSERT INTO pgvision.pipelines (name, model, options, builtin)
VALUES ('general_feature_extractor', pgvision.default_model(), '{"output": "feature", "normalize": false}', true)
ON CONFLICT (name) DO NOTHING;

-- the install's default (incremental/006) into the signatures that default to it
SELECT pgvision._apply_default_model(pgvision.default_model());

-- pgvision_admin (000-common.sql) manages models and pipelines.
GRANT USAGE ON SCHEMA pgvision TO PUBLIC;
GRANT SELECT ON pgvision.models, pgvision.pipelines TO PUBLIC;
GRANT INSERT, DELETE ON pgvision.models, pgvision.pipelines TO pgvision_admin;
-- Feature columns' models: open to all, narrowed by row-level security to the tables a role
-- can read and the columns it may update (incremental/005-feature-models.sql).
GRANT SELECT, INSERT, UPDATE, DELETE ON pgvision.feature_models TO PUBLIC;

REVOKE ALL ON FUNCTION pgvision.register_model(text, bytea, jsonb, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision.drop_model(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision.pipeline_create(text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision.pipeline_drop(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgvision.register_model(text, bytea, jsonb, text[]) TO pgvision_admin;
GRANT EXECUTE ON FUNCTION pgvision.drop_model(text) TO pgvision_admin;
GRANT EXECUTE ON FUNCTION pgvision.pipeline_create(text, text, jsonb) TO pgvision_admin;
GRANT EXECUTE ON FUNCTION pgvision.pipeline_drop(text) TO pgvision_admin;
-- reads files of the server's runtime folder: CREATE EXTENSION and upgrades only
REVOKE ALL ON FUNCTION pgvision._install_builtin_models() FROM PUBLIC;

-- pgvision's objects belong to the superuser who created the extension, so a GRANT or
-- REVOKE on them by another role changes nothing, with only a WARNING (which pg_restore
-- does not even print): a REVOKE a DBA made would be lost without a word by a restore as
-- the database's owner. This makes such a statement fail instead, naming what it was.
-- PostgreSQL tells an event trigger the kind of object, not which one, so the statement's
-- text is read; a GRANT run from inside a function is not seen.
CREATE OR REPLACE FUNCTION pgvision._refuse_ineffective_grant()
RETURNS event_trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _query text := pg_catalog.current_query();
BEGIN
    IF _query IS NULL
       OR _query !~* '\mON\s+((FUNCTION|PROCEDURE|ROUTINE|TABLE|SEQUENCE)\s+)?"?pgvision"?\s*\.|\m(ON|IN)\s+SCHEMA\s+"?pgvision"?\M'
       OR pg_catalog.pg_has_role((SELECT e.extowner FROM pg_catalog.pg_extension e
                                  WHERE e.extname = 'pgvision'), 'USAGE') THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'privileges on pgvision''s objects can be changed only by a superuser'
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = pg_catalog.format('statement: %s', pg_catalog.left(_query, 500)),
              HINT = 'run it as a superuser; to restore a dump that changed them, restore as a superuser';
END
$$;
COMMENT ON FUNCTION pgvision._refuse_ineffective_grant() IS
'internal: event trigger function; makes a GRANT or REVOKE on pgvision''s objects by a role that does not own them an error instead of a warning';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger t WHERE t.evtname = 'pgvision_refuse_ineffective_grant') THEN
        CREATE EVENT TRIGGER pgvision_refuse_ineffective_grant ON ddl_command_end
            WHEN TAG IN ('GRANT', 'REVOKE') EXECUTE FUNCTION pgvision._refuse_ineffective_grant();
    END IF;
END
$$;
COMMENT ON EVENT TRIGGER pgvision_refuse_ineffective_grant IS
'a GRANT or REVOKE on pgvision''s objects by a role that does not own them fails instead of doing nothing';
