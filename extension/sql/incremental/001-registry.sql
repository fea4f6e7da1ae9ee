-- Model registry and pipelines: state that travels with the database (pg_dump).

CREATE SCHEMA pgvision;
COMMENT ON SCHEMA pgvision IS 'pgvision: reverse image search (models, embedding, search)';

CREATE TABLE pgvision.models (
    name     text PRIMARY KEY,
    sha256   text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    dim      int NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    spec     jsonb NOT NULL,
    labels   text[],
    onnx     bytea NOT NULL,
    builtin  boolean NOT NULL DEFAULT false,
    created  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- Float weights barely compress: don't spend CPU on trying (and keep reads a plain copy).
ALTER TABLE pgvision.models ALTER COLUMN onnx SET STORAGE EXTERNAL;
CREATE INDEX models_sha256_idx ON pgvision.models (sha256);

CREATE TABLE pgvision.pipelines (
    name     text PRIMARY KEY,
    model    text NOT NULL,
    options  jsonb NOT NULL DEFAULT '{}',
    builtin  boolean NOT NULL DEFAULT false,
    created  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Built-in rows come back with CREATE EXTENSION; pg_dump keeps the user's own.
SELECT pg_catalog.pg_extension_config_dump('pgvision.models', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('pgvision.pipelines', 'WHERE NOT builtin');
