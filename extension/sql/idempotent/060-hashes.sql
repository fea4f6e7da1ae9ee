-- Perceptual hashes: 64 bits an image, near for near-duplicates (a re-encoded, resized or
-- lightly edited copy), compared with pgvector's Hamming distance (<~>, hamming_distance)
-- and indexed with its hnsw bit_hamming_ops. Bit for bit those of the PyPI package
-- imagehash (phash, dhash with their defaults) for the image embed's decoder gives (EXIF
-- orientation applied, transparency on white), computed with numpy alone
-- (python_udf/pgvision_runtime/hashes.py, which says where exact parity cannot be had).
-- Decoded with embed's decoder and limits (pgvision.max_pixels, pgvision.max_image_bytes).
-- PARALLEL UNSAFE for the reason embed is (003-embed.sql): the settings are read with
-- plpy.execute.
--
-- A function's result type keeps no length: an hnsw index on the expression needs the cast
-- to bit(64), and the query's ORDER BY the same expression.

CREATE OR REPLACE FUNCTION pgvision.phash(image bytea)
RETURNS bit(64)
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 10000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.phash(plpy, GD, image)
$python$;
COMMENT ON FUNCTION pgvision.phash(bytea) IS
'the perceptual (DCT) hash of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes), 64 bits equal to imagehash.phash of the image with EXIF orientation applied and transparency on white (imagehash''s hex text: lpad(to_hex(pgvision.phash(image)::bigint), 16, ''0'')); near-duplicates are a few bits apart by Hamming distance, pgvector''s <~>; index a stored bit(64) column with CREATE INDEX ON t USING hnsw (h bit_hamming_ops) and query ORDER BY h <~> pgvision.phash($1) LIMIT k, or index the expression: USING hnsw ((pgvision.phash(image)::bit(64)) bit_hamming_ops) with ORDER BY pgvision.phash(image)::bit(64) <~> pgvision.phash($1); the image limits and errors of pgvision.embed';

CREATE OR REPLACE FUNCTION pgvision.dhash(image bytea)
RETURNS bit(64)
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL UNSAFE COST 10000
SET search_path = pg_catalog, pg_temp
AS $python$
@PREAMBLE@
return pv.dhash(plpy, GD, image)
$python$;
COMMENT ON FUNCTION pgvision.dhash(bytea) IS
'the difference hash of an image (JPEG, PNG, GIF, WebP, BMP or TIFF bytes), 64 bits equal to imagehash.dhash of the image with EXIF orientation applied and transparency on white: whether each pixel of a 9x8 grey copy is brighter than the one on its left; compared and indexed as pgvision.phash is: pgvector''s <~> (Hamming distance), CREATE INDEX ON t USING hnsw (h bit_hamming_ops) on a stored bit(64) column, or USING hnsw ((pgvision.dhash(image)::bit(64)) bit_hamming_ops); the image limits and errors of pgvision.embed';
