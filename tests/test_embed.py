"""pgvision.embed and embed_batch from SQL, as an ordinary role."""

import io
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from data import RUNTIME_MODELS, encode, photo

DEFAULT_MODELS = RUNTIME_MODELS


@pytest.fixture(scope="module")
def local_model():
    """The runtime package called directly on the default model, outside PostgreSQL."""
    from pgvision_runtime import models, spec

    folder = pathlib.Path(os.environ.get("PGVISION_MODEL_DIR", DEFAULT_MODELS))
    onnx_bytes = (folder / "efficientnet_lite0.onnx").read_bytes()
    model_spec = spec.validate(json.loads((folder / "efficientnet_lite0_normalized.json").read_text()))
    return models.Model(onnx_bytes, model_spec)


LIMITS = {"max_pixels": 50_000_000, "max_bytes": 64 * 1024 * 1024}


def dog_png():
    return encode(Image.open(io.BytesIO(photo("dog"))), "PNG")


@pytest.mark.parametrize("fmt,image", [("jpeg", photo("dog")), ("png", dog_png())])
def test_sql_embed_equals_runtime(conn, local_model, fmt, image):
    sql = conn.execute("SELECT pgvision.embed(%s)", [image]).fetchone()[0].to_numpy()
    direct = local_model.embed(image, LIMITS)
    assert sql.shape == (1280,)
    assert np.abs(sql - direct).max() < 1e-5


def test_embed_is_deterministic_and_named_model_is_default(conn):
    a, b = conn.execute("SELECT pgvision.embed(%s), pgvision.embed(%s, 'efficientnet_lite0_normalized')",
                        [photo("eagle"), photo("eagle")]).fetchone()
    assert np.array_equal(a.to_numpy(), b.to_numpy())


def test_null_in_null_out(conn):
    assert conn.execute("SELECT pgvision.embed(NULL)").fetchone()[0] is None
    assert conn.execute("SELECT pgvision.embed(%s, NULL)", [photo("dog")]).fetchone()[0] is None
    assert conn.execute("SELECT pgvision.embed_batch(NULL)").fetchone()[0] is None


def test_embed_batch_matches_embed_and_keeps_order_and_nulls(conn):
    names = ["dog", "eagle", "kite", "horses"]
    images = [photo(n) for n in names]
    batch = conn.execute("SELECT pgvision.embed_batch(%s)", [images[:2] + [None] + images[2:]]
                         ).fetchone()[0]
    assert len(batch) == 5 and batch[2] is None
    batch = [b for b in batch if b is not None]
    for image, got in zip(images, batch):
        single = conn.execute("SELECT pgvision.embed(%s)", [image]).fetchone()[0]
        assert np.abs(np.asarray(single.to_numpy()) - np.asarray(got.to_numpy())).max() < 1e-5


def test_embed_batch_of_nothing_is_an_empty_array(conn):
    assert conn.execute("SELECT pgvision.embed_batch('{}'::bytea[])").fetchone()[0] == []
    assert conn.execute("SELECT pgvision.embed_batch(ARRAY[NULL]::bytea[])").fetchone()[0] == [None]


def test_features_arrive_bit_for_bit(conn, local_model):
    """The float4 bytes the runtime returns become the same vector as its text form would."""
    image = photo("kite")
    direct = local_model.embed(image, LIMITS)
    text = "[" + ",".join("%.9g" % v for v in direct.tolist()) + "]"
    same, = conn.execute("SELECT pgvision._vector_from_float4(%s) = %s::vector",
                         [direct.astype("<f4").tobytes(), text]).fetchone()
    assert same
    got = conn.execute("SELECT pgvision.embed(%s)::real[]", [image]).fetchone()[0]
    assert np.array_equal(np.asarray(got, dtype=np.float32), direct)


def test_embed_batch_smaller_than_batch_size(conn):
    conn.execute("SET pgvision.batch_size = 2")
    images = [photo(n) for n in ("dog", "eagle", "kite")]
    batch = conn.execute("SELECT pgvision.embed_batch(%s)", [images]).fetchone()[0]
    assert len(batch) == 3 and all(b is not None for b in batch)


def test_generated_column_and_expression_index(conn):
    conn.execute("""CREATE TEMP TABLE gen (id int PRIMARY KEY, image bytea,
                    feature vector(1280) GENERATED ALWAYS AS (pgvision.embed(image)) STORED)""")
    conn.execute("INSERT INTO gen (id, image) VALUES (1, %s), (2, %s)", [photo("dog"), photo("kite")])
    rows = conn.execute("SELECT id, feature FROM gen ORDER BY id").fetchall()
    assert [r[1] is not None for r in rows] == [True, True]
    # an expression index on embed() is allowed because embed is IMMUTABLE
    conn.execute("CREATE TEMP TABLE expr (id int, image bytea)")
    conn.execute("CREATE INDEX ON expr USING hnsw ((pgvision.embed(image)::vector(1280)) vector_l2_ops)")


def test_thread_setting_gives_same_features(conn):
    a = conn.execute("SELECT pgvision.embed(%s)", [photo("dog")]).fetchone()[0].to_numpy()
    conn.execute("SET pgvision.threads = 1")
    b = conn.execute("SELECT pgvision.embed(%s)", [photo("dog")]).fetchone()[0].to_numpy()
    assert np.abs(a - b).max() < 1e-5


def test_index_scan_for_order_by_embed(conn):
    conn.execute("CREATE TEMP TABLE idx (id int PRIMARY KEY, feature vector(1280))")
    rng = np.random.default_rng(1)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO idx VALUES (%s, %s)",
                        [(i, rng.standard_normal(1280).astype(np.float32)) for i in range(300)])
    conn.execute("CREATE INDEX ON idx USING hnsw (feature vector_l2_ops)")
    conn.execute("ANALYZE idx")
    conn.execute("SET enable_seqscan = off")
    for query in (
        "SELECT id FROM idx ORDER BY feature <-> pgvision.embed(%s) LIMIT 5",
        "SELECT id, l2_distance(feature, q) FROM idx, pgvision.embed(%s) AS q "
        "ORDER BY feature <-> q LIMIT 5",
    ):
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, [photo("dog")]))
        assert "Index Scan using idx_feature_idx" in plan, plan
        assert len(conn.execute(query, [photo("dog")]).fetchall()) == 5


def test_embed_in_a_query_that_could_run_in_parallel(conn):
    # plpy.execute starts a subtransaction, forbidden in parallel mode: the functions are
    # PARALLEL UNSAFE so the planner keeps such queries serial instead of failing
    conn.execute("CREATE TEMP TABLE par (id int, image bytea)")
    conn.execute("INSERT INTO par VALUES (1, %s), (2, %s)", [photo("dog"), photo("kite")])
    conn.execute("SET force_parallel_mode = on")
    try:
        dims = conn.execute("SELECT vector_dims(pgvision.embed(image)) FROM par ORDER BY id").fetchall()
        assert dims == [(1280,), (1280,)]
        got = conn.execute("SELECT count(*) FROM par, pgvision.classify(image, 1)").fetchone()
        assert got == (2,)
    finally:
        conn.execute("RESET force_parallel_mode")
