-- A table of images, as in the AnalyticDB tutorial: id, class, the image bytes, the feature.
CREATE EXTENSION IF NOT EXISTS pgvision CASCADE;

DROP TABLE IF EXISTS images;
CREATE TABLE images (
    id      bigint PRIMARY KEY,
    class   text,
    image   bytea NOT NULL,
    feature vector(1280)
);
