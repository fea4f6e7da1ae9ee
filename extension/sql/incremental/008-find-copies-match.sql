-- find_copies gained image_column and matched (its best rows checked by keypoint matching):
-- the old signature goes, the idempotent file creates the new one.
DROP FUNCTION IF EXISTS pgvision.find_copies(regclass, bytea, int, name, name, int);
