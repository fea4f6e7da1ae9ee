-- Built-in models and pipelines, and who may use what. Runs on install and on every upgrade.

SELECT pgvision._install_builtin_models();

INSERT INTO pgvision.pipelines (name, model, options, builtin)
VALUES ('general_feature_extractor', 'efficientnet_lite0', '{"output": "feature", "normalize": false}', true)
ON CONFLICT (name) DO NOTHING;

GRANT USAGE ON SCHEMA pgvision TO PUBLIC;
GRANT SELECT ON pgvision.models, pgvision.pipelines TO PUBLIC;
-- Registering code-like objects (models) is for the extension's owner and whom it grants.
REVOKE ALL ON FUNCTION pgvision.register_model(text, bytea, jsonb, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision.drop_model(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgvision._install_builtin_models() FROM PUBLIC;
