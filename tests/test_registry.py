"""The model registry: register, refuse, drop, and survive pg_dump / pg_restore."""

import hashlib
import json
import os
import pathlib
import subprocess

import numpy as np
import onnx
import psycopg
import pytest
from onnx import TensorProto, helper

from conftest import PG_BIN, dsn
from data import photo

TINY_SPEC = {"input": "x", "size": [8, 8], "outputs": {"feature": "f"}}


def tiny_model(channels_out=3, domain=""):
    """x [N,3,8,8] -> GlobalAveragePool -> Flatten -> f [N,3]: a real, minimal image model."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], domain=domain)]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", channels_out])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def register(conn, name, model, spec=TINY_SPEC, labels=None):
    return conn.execute("SELECT pgvision.register_model(%s, %s, %s, %s)",
                        [name, model, json.dumps(spec), labels]).fetchone()[0]


def test_default_model_is_registered_by_create_extension(conn):
    name, dim, builtin, spec, sha = conn.execute(
        "SELECT name, dim, builtin, spec, sha256 FROM pgvision.models ORDER BY name").fetchone()
    assert (name, dim, builtin) == ("efficientnet_lite0", 1280, True)
    assert spec["size"] == [224, 224] and spec["outputs"]["feature"] == "feature"
    onnx_bytes = conn.execute("SELECT onnx FROM pgvision.models WHERE name = %s", [name]).fetchone()[0]
    assert hashlib.sha256(onnx_bytes).hexdigest() == sha


def test_register_embed_and_drop(admin):
    sha = register(admin, "tiny_rgb", tiny_model())
    try:
        assert sha == hashlib.sha256(tiny_model()).hexdigest()
        feature = admin.execute("SELECT pgvision.embed(%s, 'tiny_rgb')::text",
                                [photo("dog")]).fetchone()[0]
        values = json.loads(feature)
        assert len(values) == 3 and all(-1 <= v <= 256 for v in values)
        # a model never changes under its name
        with pytest.raises(psycopg.Error) as info:
            register(admin, "tiny_rgb", tiny_model())
        assert info.value.sqlstate == "42710"
        assert "new name" in info.value.diag.message_hint
        # its dimension does not fit a 1280-d column
        admin.execute("CREATE TEMP TABLE t (feature vector(1280))")
        with pytest.raises(psycopg.Error) as info:
            admin.execute("INSERT INTO t VALUES (pgvision.embed(%s, 'tiny_rgb'))", [photo("dog")])
        assert info.value.sqlstate == "22000"
        assert "expected 1280 dimensions, not 3" in info.value.diag.message_primary
    finally:
        admin.execute("SELECT pgvision.drop_model('tiny_rgb')")
    assert not admin.execute("SELECT 1 FROM pgvision.models WHERE name = 'tiny_rgb'").fetchone()


def external_data_model():
    model = onnx.load_model_from_string(tiny_model())
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    model.graph.initializer.append(weight)
    return model.SerializeToString()


@pytest.mark.parametrize("case,model,spec,sqlstate", [
    ("garbage bytes", b"not an onnx file", TINY_SPEC, "22023"),
    ("external data", external_data_model(), TINY_SPEC, "42501"),
    ("custom operator domain", tiny_model(domain="com.example.ops"), TINY_SPEC, "42501"),
    ("spec names a missing output", tiny_model(), {**TINY_SPEC, "outputs": {"feature": "g"}}, "22023"),
    ("spec names a missing input", tiny_model(), {**TINY_SPEC, "input": "y"}, "22023"),
    ("spec with an unknown key", tiny_model(), {**TINY_SPEC, "colour": "red"}, "22023"),
    ("spec size is not [h, w]", tiny_model(), {**TINY_SPEC, "size": [8]}, "22023"),
    ("input size does not fit the graph", tiny_model(), {**TINY_SPEC, "size": [9, 9]}, "22023"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_register_refuses(admin, case, model, spec, sqlstate):
    with pytest.raises(psycopg.Error) as info:
        register(admin, "refused", model, spec)
    assert info.value.sqlstate == sqlstate, (case, str(info.value))
    assert not admin.execute("SELECT 1 FROM pgvision.models WHERE name = 'refused'").fetchone()


def test_ordinary_roles_cannot_register_or_drop(conn):
    for sql, args in (("SELECT pgvision.register_model('x', %s, %s)", [tiny_model(), json.dumps(TINY_SPEC)]),
                      ("SELECT pgvision.drop_model('efficientnet_lite0')", [])):
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql, args)
        assert info.value.sqlstate == "42501"


def test_builtin_model_cannot_be_dropped(admin):
    with pytest.raises(psycopg.Error) as info:
        admin.execute("SELECT pgvision.drop_model('efficientnet_lite0')")
    assert info.value.sqlstate == "2BP01"


def test_registry_survives_dump_and_restore(server, admin, tmp_path):
    src, dst = "dump_src", "dump_dst"
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        for db in (src, dst):
            c.execute(f"DROP DATABASE IF EXISTS {db}")
        c.execute(f"CREATE DATABASE {src}")
        c.execute(f"CREATE DATABASE {dst}")
    with psycopg.connect(dsn(server, src), autocommit=True) as c:
        c.execute("CREATE EXTENSION pgvision CASCADE")
        register(c, "tiny_rgb", tiny_model())
        c.execute("SELECT pgvision.pipeline_create('tiny_pipe', 'tiny_rgb')")
        c.execute("CREATE TABLE images (id int PRIMARY KEY, image bytea, feature vector(1280))")
        for i, name in enumerate(("dog", "eagle", "kite", "horses")):
            c.execute("INSERT INTO images VALUES (%s, %s, pgvision.embed(%s))",
                      [i, photo(name), photo(name)])
        c.execute("CREATE INDEX ON images USING hnsw (feature vector_l2_ops)")
        query = ("SELECT id, feature <-> pgvision.embed(%s) FROM images "
                 "ORDER BY feature <-> pgvision.embed(%s) LIMIT 3")
        before = c.execute(query, [photo("dog")] * 2).fetchall()
        models_before = c.execute("SELECT name, sha256, dim, spec, builtin FROM pgvision.models "
                                  "ORDER BY name").fetchall()

    dump = tmp_path / "db.dump"
    env = {**os.environ, "PGHOST": server.host, "PGPORT": str(server.port), "PGUSER": "postgres"}
    subprocess.run([str(PG_BIN / "pg_dump"), "-Fc", "-f", str(dump), src], check=True, env=env)
    subprocess.run([str(PG_BIN / "pg_restore"), "--exit-on-error", "-d", dst, str(dump)],
                   check=True, env=env)

    with psycopg.connect(dsn(server, dst), autocommit=True) as c:
        models_after = c.execute("SELECT name, sha256, dim, spec, builtin FROM pgvision.models "
                                 "ORDER BY name").fetchall()
        assert models_after == models_before
        assert c.execute("SELECT model FROM pgvision.pipelines WHERE name = 'tiny_pipe'"
                         ).fetchone() == ("tiny_rgb",)
        after = c.execute(query, [photo("dog")] * 2).fetchall()
        assert [r[0] for r in after] == [r[0] for r in before]
        assert np.allclose([r[1] for r in after], [r[1] for r in before], atol=1e-5)
        assert c.execute("SELECT vector_dims(pgvision.embed(%s, 'tiny_rgb'))",
                         [photo("dog")]).fetchone()[0] == 3
