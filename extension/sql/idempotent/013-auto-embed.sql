-- Automatic embedding: one generic trigger function, told the columns and the model by the
-- trigger's arguments.

CREATE OR REPLACE FUNCTION pgvision._auto_embed()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _image bytea;
BEGIN
    -- TG_ARGV: image column, feature column, model
    EXECUTE pg_catalog.format('SELECT ($1).%I', TG_ARGV[0]) INTO _image USING NEW;
    -- The feature travels as pgvector's text form, which reads back exactly.
    RETURN pg_catalog.jsonb_populate_record(
        NEW, pg_catalog.jsonb_build_object(TG_ARGV[1], pgvision.embed(_image, TG_ARGV[2])));
END
$$;
COMMENT ON FUNCTION pgvision._auto_embed() IS
'internal: trigger function of pgvision.enable_auto_embed; sets the feature column (TG_ARGV[1]) to pgvision.embed of the image column (TG_ARGV[0]) with the model TG_ARGV[2]';

CREATE OR REPLACE FUNCTION pgvision.enable_auto_embed(tbl regclass, image_column name, feature_column name,
                                                      model text DEFAULT '')
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._check_owner(tbl);
    IF model = '' THEN  -- left out: the column's recorded model, else the default one
        model := coalesce(pgvision.column_model(tbl, feature_column), pgvision.default_model());
    END IF;
    PERFORM pgvision._embed_columns(tbl, image_column, feature_column, model);
    PERFORM pgvision.set_column_model(tbl, feature_column, model);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE TRIGGER pgvision_auto_embed BEFORE INSERT OR UPDATE OF %I ON %s'
        ' FOR EACH ROW EXECUTE FUNCTION pgvision._auto_embed(%L, %L, %L)',
        image_column, tbl, image_column, feature_column, model);
END
$$;
COMMENT ON FUNCTION pgvision.enable_auto_embed(regclass, name, name, text) IS
'creates the trigger pgvision_auto_embed, which sets the feature column to pgvision.embed of the image column with model (left out: the column''s recorded model, else the default model, pgvision.default_model(); recorded with pgvision.set_column_model) on INSERT and on UPDATE of the image column (NULL image, NULL feature); replaces an earlier one; for the table''s owner';

CREATE OR REPLACE FUNCTION pgvision.disable_auto_embed(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgvision._check_owner(tbl);
    EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS pgvision_auto_embed ON %s', tbl);
END
$$;
COMMENT ON FUNCTION pgvision.disable_auto_embed(regclass) IS
'drops the trigger created by pgvision.enable_auto_embed; features already computed stay; for the table''s owner';
