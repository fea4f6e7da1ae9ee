"""Search quality: itself first, near-duplicates next, classes cluster."""

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from data import PHOTOS, encode, fashion_sample, photo


def variants(name):
    """Near-duplicates of a photo: resized, re-encoded, slightly brightened."""
    img = Image.open(io.BytesIO(photo(name))).convert("RGB")
    w, h = img.size
    return [
        encode(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "JPEG", quality=85),
        encode(img, "JPEG", quality=40),
        encode(img, "WEBP", quality=80),
        encode(ImageEnhance.Brightness(img).enhance(1.1), "PNG"),
    ]


@pytest.fixture(scope="module")
def photos_table(server):
    import psycopg

    from conftest import APP_ROLE, dsn
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS photos")
        c.execute("CREATE TABLE photos (id serial PRIMARY KEY, name text, copy int, image bytea,"
                  " feature vector(1280))")
        for name in PHOTOS:
            for copy, image in enumerate([photo(name)] + variants(name)):
                c.execute("INSERT INTO photos (name, copy, image) VALUES (%s, %s, %s)",
                          [name, copy, image])
        c.execute("UPDATE photos SET feature = pgvision.embed(image)")
        c.execute("CREATE INDEX ON photos USING hnsw (feature vector_l2_ops)")
    yield "photos"


def test_nearest_neighbour_is_itself(conn, photos_table):
    for name in PHOTOS:
        rows = conn.execute(
            "SELECT name, copy, feature <-> pgvision.embed(%s) AS d FROM photos "
            "ORDER BY feature <-> pgvision.embed(%s) LIMIT 1", [photo(name), photo(name)]).fetchall()
        assert rows[0][:2] == (name, 0) and rows[0][2] < 1e-4


def test_near_duplicates_rank_above_other_images(conn, photos_table):
    for name in PHOTOS:
        rows = conn.execute(
            "SELECT name FROM photos ORDER BY feature <-> pgvision.embed(%s) LIMIT 5",
            [photo(name)]).fetchall()
        assert [r[0] for r in rows] == [name] * 5, (name, rows)


def test_fashion_mnist_precision_at_10_by_class(conn):
    sample = fashion_sample(per_class=30)
    conn.execute("CREATE TEMP TABLE fashion (id int PRIMARY KEY, class text, image bytea,"
                 " feature vector(1280))")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO fashion (id, class, image) VALUES (%s, %s, %s)", sample)
    conn.execute("""
        WITH b AS (SELECT array_agg(id ORDER BY id) ids, array_agg(image ORDER BY id) imgs FROM fashion)
        UPDATE fashion f SET feature = e.feature
        FROM b, unnest(b.ids, pgvision.embed_batch(b.imgs)) AS e (id, feature) WHERE f.id = e.id""")
    precision = conn.execute("""
        SELECT avg(hits / 10.0) FROM fashion q, LATERAL (
            SELECT count(*) FILTER (WHERE n.class = q.class) AS hits FROM (
                SELECT class FROM fashion n WHERE n.id <> q.id
                ORDER BY n.feature <-> q.feature LIMIT 10) n) s""").fetchone()[0]
    # chance is 0.1 with ten balanced classes
    assert precision > 0.5, precision
