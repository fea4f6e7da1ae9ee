-- Thumbnails of stored images, for psql, BI tools and web pages: small pictures, and data:
-- URLs that a Grafana table cell or an HTML <img> shows as they are.
-- Decoded with embed's decoder and limits (pgvision.max_pixels, pgvision.max_image_bytes),
-- EXIF orientation applied. PARALLEL UNSAFE for the reason embed is (003-embed.sql): the
-- settings are read with plpy.execute.

CREATE OR REPLACE FUNCTION pgvision.thumbnail(image bytea, size int DEFAULT 128, format text DEFAULT 'jpeg')
RETURNS bytea
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 10000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.thumbnail(plpy, GD, image, size, format)
$python$;
COMMENT ON FUNCTION pgvision.thumbnail(bytea, int, text) IS
'a thumbnail of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes): its longest side size pixels (1 to 1024), its aspect kept, EXIF orientation applied, encoded as format (jpeg, png or webp); transparency is flattened on white for jpeg and kept for png and webp; the image limits and errors of pgvision.embed';

CREATE OR REPLACE FUNCTION pgvision.data_url(image bytea, size int DEFAULT 128, format text DEFAULT 'jpeg')
RETURNS text
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 10000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.data_url(plpy, GD, image, size, format)
$python$;
COMMENT ON FUNCTION pgvision.data_url(bytea, int, text) IS
'pgvision.thumbnail as a data: URL (''data:image/jpeg;base64,...''), which Grafana table cells and HTML <img src> show as a picture';
