-- find_duplicates gained near_pixels (a near link confirmed pixel by pixel) and its near
-- thresholds default by whether the images are compared: the old signature goes, the
-- idempotent file creates the new one.
DROP FUNCTION IF EXISTS pgvision.find_duplicates(regclass, name, name, name, int, double precision, double precision, int);
