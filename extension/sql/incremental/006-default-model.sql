-- The install's default model: what embed and embed_batch use when the call names none, and
-- what a column without a recorded model is searched with. One row. A fresh install takes
-- the best default there is (efficientnet_lite0_normalized, BENCHMARKS.md section 4b); a
-- database updated from an older version keeps efficientnet_lite0, so that the calls it
-- already makes return the vectors they did (a model never changes under its name, and the
-- default of a call is part of what it means). The row is dumped, so a restore keeps it
-- (the insert trigger of idempotent/008-default-model.sql folds the dumped row into the
-- one CREATE EXTENSION made). Its name sorts after pgvision.models: pg_dump writes the
-- data of tables without dependencies in name order, so a restore has a default that is a
-- model of the user's own registered before the row arrives.

CREATE TABLE pgvision.models_default (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    model     text NOT NULL
);

-- this file runs before the functions are created in a fresh install, after an older
-- version created them in an update
INSERT INTO pgvision.models_default (model)
VALUES (CASE WHEN pg_catalog.to_regprocedure('pgvision.embed(bytea, text)') IS NULL
             THEN 'efficientnet_lite0_normalized' ELSE 'efficientnet_lite0' END);

SELECT pg_catalog.pg_extension_config_dump('pgvision.models_default', '');

-- its callers now read pgvision.default_model()
DROP FUNCTION IF EXISTS pgvision._default_model();
