-- Built-in models and pipelines, and who may use what. Runs on install and on every upgrade.

SELECT pgvision._install_builtin_models();

INSERT INTO pgvision.pipelines (name, model, options, builtin)
VALUES ('general_feature_extractor', 'efficientnet_lite0', '{"output": "feature", "normalize": false}', true)
ON CONFLICT (name) DO NOTHING;

-- pgvision_admin manages models and pipelines. A model is code the server runs, so
-- registering one is not for every role. Roles belong to the cluster, not to a database:
-- the role outlives DROP EXTENSION and is shared by every database that has pgvision.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgvision_admin') THEN
        CREATE ROLE pgvision_admin NOLOGIN;
        COMMENT ON ROLE pgvision_admin IS 'may register and drop pgvision models and pipelines';
    END IF;
END
$$;

GRANT USAGE ON SCHEMA pgvision TO PUBLIC;
GRANT SELECT ON pgvision.models, pgvision.pipelines TO PUBLIC;
GRANT INSERT, DELETE ON pgvision.models, pgvision.pipelines TO pgvision_admin;

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
