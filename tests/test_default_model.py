"""The install's default model: a fresh install embeds with features of length 1, so that
`<->`, `<=>` and `<#>` rank alike; a database updated from 0.2.0, or restored from one,
keeps efficientnet_lite0 for the calls it already makes; set_default_model moves it."""

import json
import os
import pathlib
import subprocess

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from conftest import APP_ROLE, PG_BIN, dsn
from data import RUNTIME_MODELS, photo
from test_registry import TINY_SPEC, tiny_model

NORMALIZED = "efficientnet_lite0_normalized"
RAW = "efficientnet_lite0"
PHOTOS = ("dog", "eagle", "horses", "person", "giraffe", "kite", "scream")


def database(server, name, version=None):
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    c = psycopg.connect(dsn(server, name), autocommit=True)
    c.execute("CREATE EXTENSION pgvision %s CASCADE" % (f"VERSION '{version}'" if version else ""))
    register_vector(c)
    return c


def drop(server, *names):
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        for name in names:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def vec(c, sql, *args):
    return np.asarray(c.execute(sql, args).fetchone()[0].to_numpy(), dtype=np.float64)


def defaulting_to(c, model):
    """The pgvision functions whose model argument defaults to ``model``."""
    return [r[0] for r in c.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'pgvision'::regnamespace"
        " AND pg_get_function_arguments(oid) LIKE %s ORDER BY 1",
        [f"%model text DEFAULT '{model}'::text%"])]


def signature_default(c, function="pgvision.embed(bytea, text)"):
    return c.execute("SELECT pg_get_function_arguments(%s::regprocedure)", [function]).fetchone()[0]


@pytest.fixture(scope="module")
def fresh(server):
    c = database(server, "dm_fresh")
    yield c
    c.close()
    drop(server, "dm_fresh")


@pytest.fixture(scope="module")
def updated(server):
    """A database made at 0.2.0, with a table filled by embed(image) there, then updated;
    and the vectors 0.2.0 returned."""
    c = database(server, "dm_updated", "0.2.0")
    c.execute("CREATE TABLE public.pics (id int PRIMARY KEY, image bytea, feature vector(1280))")
    for i, name in enumerate(PHOTOS):
        c.execute("INSERT INTO public.pics VALUES (%s, %s, pgvision.embed(%s))", [i, photo(name), photo(name)])
    before = {name: c.execute("SELECT pgvision.embed(%s)::text", [photo(name)]).fetchone()[0] for name in PHOTOS}
    c.execute("ALTER EXTENSION pgvision UPDATE")
    yield c, before
    c.close()
    drop(server, "dm_updated")


def test_a_fresh_install_embeds_with_features_of_length_one(fresh):
    assert fresh.execute("SELECT pgvision.default_model()").fetchone()[0] == NORMALIZED
    assert f"model text DEFAULT '{NORMALIZED}'::text" in signature_default(fresh)
    assert defaulting_to(fresh, NORMALIZED) == ["create_sharded_table", "embed", "embed_batch", "embed_shards"]
    for name in ("dog", "person"):
        unit = vec(fresh, "SELECT pgvision.embed(%s)", photo(name))
        raw = vec(fresh, f"SELECT pgvision.embed(%s, '{RAW}')", photo(name))
        assert abs(np.linalg.norm(unit) - 1) < 1e-6
        assert np.abs(unit - raw / np.linalg.norm(raw)).max() < 1e-6
        batch = fresh.execute("SELECT pgvision.embed_batch(ARRAY[%s])", [photo(name)]).fetchone()[0]
        assert np.array_equal(batch[0].to_numpy(), unit.astype(np.float32))
        int8 = vec(fresh, "SELECT pgvision.embed(%s, 'efficientnet_lite0_int8_normalized')", photo(name))
        assert abs(np.linalg.norm(int8) - 1) < 1e-6
    # classify reads the logits, which normalising the feature leaves alone
    labels = fresh.execute("SELECT label FROM pgvision.classify(%s, 3, %s)", [photo("dog"), NORMALIZED]).fetchall()
    assert labels == fresh.execute("SELECT label FROM pgvision.classify(%s, 3)", [photo("dog")]).fetchall()


def test_l2_cosine_and_inner_product_rank_alike(fresh):
    fresh.execute("DROP TABLE IF EXISTS public.ranked")
    fresh.execute("CREATE TABLE public.ranked (id int PRIMARY KEY, feature vector(1280))")
    for i, name in enumerate(PHOTOS):
        fresh.execute("INSERT INTO public.ranked VALUES (%s, pgvision.embed(%s))", [i, photo(name)])
    query = photo("dog")  # the dog itself ranks first everywhere
    orders = [[r[0] for r in fresh.execute(
        f"SELECT id FROM public.ranked ORDER BY feature {op} (SELECT pgvision.embed(%s)), id", [query])]
        for op in ("<->", "<=>", "<#>")]
    assert orders[0] == orders[1] == orders[2] and orders[0][0] == 0
    # and the raw feature's L2 order is not the cosine order of the same images, which is
    # why the normalised feature is the default (not asserted: it depends on the images)


def test_an_updated_database_keeps_the_vectors_of_its_calls(updated):
    c, before = updated
    assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pgvision'").fetchone()[0] != "0.2.0"
    assert c.execute("SELECT pgvision.default_model()").fetchone()[0] == RAW
    assert f"model text DEFAULT '{RAW}'::text" in signature_default(c)
    for name in PHOTOS:
        assert c.execute("SELECT pgvision.embed(%s)::text", [photo(name)]).fetchone()[0] == before[name], name
    # the column filled at 0.2.0 has no record and is searched with the old default
    assert c.execute("SELECT pgvision.column_model('public.pics', 'feature')").fetchone()[0] is None
    rows = c.execute("SELECT id, distance FROM pgvision.search('public.pics', %s, 1)", [photo("eagle")]).fetchall()
    assert rows[0][0] == str(PHOTOS.index("eagle")) and rows[0][1] < 1e-6
    # the new models are there for the move
    assert c.execute("SELECT count(*) FROM pgvision.models WHERE name IN (%s, %s)",
                     [NORMALIZED, "efficientnet_lite0_int8_normalized"]).fetchone()[0] == 2


def test_set_default_model_moves_the_default_and_records_the_old_one(server):
    c = database(server, "dm_move", "0.2.0")
    try:
        c.execute("ALTER EXTENSION pgvision UPDATE")
        c.execute("CREATE TABLE public.old (id int PRIMARY KEY, image bytea, feature vector(1280), "
                  "small vector(3))")
        c.execute("INSERT INTO public.old VALUES (1, %s, pgvision.embed(%s))", [photo("dog"), photo("dog")])
        # stored expressions that leave the model out follow the default: refused, named
        c.execute("CREATE VIEW public.old_view AS SELECT pgvision.embed(image) AS e FROM public.old")
        c.execute("CREATE TABLE public.gen (image bytea, f vector(1280) GENERATED ALWAYS AS "
                  "(pgvision.embed(image)) STORED)")
        with pytest.raises(psycopg.Error) as info:
            c.execute("SELECT pgvision.set_default_model(%s)", [NORMALIZED])
        assert info.value.sqlstate == "55006"
        assert "view public.old_view" in str(info.value) and "column f of table public.gen" in str(info.value)
        assert info.value.diag.message_hint == f"name the model in them, as pgvision.embed(image, '{RAW}'), then set the default"
        assert c.execute("SELECT pgvision.default_model()").fetchone()[0] == RAW
        c.execute("DROP TABLE public.gen")
        c.execute(f"CREATE OR REPLACE VIEW public.old_view AS SELECT pgvision.embed(image, '{RAW}') AS e FROM public.old")
        view_before = c.execute("SELECT e::text FROM public.old_view").fetchone()[0]
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_detail))
        assert c.execute("SELECT pgvision.set_default_model(%s)", [NORMALIZED]).fetchone()[0] == RAW
        assert c.execute("SELECT pgvision.default_model()").fetchone()[0] == NORMALIZED
        assert f"DEFAULT '{NORMALIZED}'::text" in signature_default(c)
        assert defaulting_to(c, NORMALIZED) == ["create_sharded_table", "embed", "embed_batch", "embed_shards"]
        assert defaulting_to(c, RAW) == ["classify"]
        assert abs(np.linalg.norm(vec(c, "SELECT pgvision.embed(%s)", photo("dog"))) - 1) < 1e-6
        # the unrecorded 1280-d column is recorded with the old default, the 3-d one is not
        assert c.execute("SELECT feature_column, model FROM pgvision.feature_models").fetchall() == [("feature", RAW)]
        assert any("1 feature column" in (n or "") for n in notices)
        rows = c.execute("SELECT distance FROM pgvision.search('public.old', %s, 1)", [photo("dog")]).fetchall()
        assert rows[0][0] < 1e-6
        # a view that names its model keeps it
        assert c.execute("SELECT e::text FROM public.old_view").fetchone()[0] == view_before
        # the same again does nothing
        assert c.execute("SELECT pgvision.set_default_model(%s)", [NORMALIZED]).fetchone()[0] == NORMALIZED
    finally:
        c.close()
        drop(server, "dm_move")


def test_only_a_superuser_sets_the_default_and_it_must_be_a_model(fresh, server):
    for sql, args, state in (("SELECT pgvision.set_default_model(%s)", ["no_such_model"], "42704"),
                             ("SELECT pgvision.set_default_model(NULL)", [], "22004"),
                             ("DELETE FROM pgvision.models_default", [], "0A000")):
        with pytest.raises(psycopg.Error) as info:
            fresh.execute(sql, args)
        assert info.value.sqlstate == state, sql
    fresh.execute(f"GRANT CONNECT ON DATABASE dm_fresh TO {APP_ROLE}")
    with psycopg.connect(dsn(server, "dm_fresh", APP_ROLE), autocommit=True) as app:
        for sql in (f"SELECT pgvision.set_default_model('{RAW}')",
                    f"UPDATE pgvision.models_default SET model = '{RAW}'",
                    f"INSERT INTO pgvision.models_default VALUES (true, '{RAW}')"):
            with pytest.raises(psycopg.Error) as info:
                app.execute(sql)
            assert info.value.sqlstate == "42501", sql
        # the row a restore brings, when it is this install's, is taken without a word
        app.execute(f"INSERT INTO pgvision.models_default VALUES (true, '{NORMALIZED}')")
    assert fresh.execute("SELECT count(*), min(model) FROM pgvision.models_default").fetchone() == (1, NORMALIZED)


def test_the_default_model_cannot_be_dropped(server):
    c = database(server, "dm_drop")
    try:
        c.execute("SELECT pgvision.register_model('dm_tiny', %s, %s)", [tiny_model(), json.dumps(TINY_SPEC)])
        c.execute("SELECT pgvision.set_default_model('dm_tiny')")
        assert c.execute("SELECT vector_dims(pgvision.embed(%s))", [photo("dog")]).fetchone()[0] == 3
        with pytest.raises(psycopg.Error) as info:
            c.execute("SELECT pgvision.drop_model('dm_tiny')")
        assert info.value.sqlstate == "2BP01" and "default model" in str(info.value)
        c.execute(f"SELECT pgvision.set_default_model('{NORMALIZED}')")
        c.execute("SELECT pgvision.drop_model('dm_tiny')")
    finally:
        c.close()
        drop(server, "dm_drop")


def dump_and_restore(server, source, target, tmp_path):
    """pg_dump of ``source`` (plain SQL) run by psql into a new database ``target``."""
    path = tmp_path / f"{source}.sql"
    env = {"PGHOST": server.host, "PGPORT": str(server.port), "PGUSER": "postgres"}

    def run(*command):
        out = subprocess.run(command, env=env, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=300)
        assert out.returncode == 0, out.stderr

    run(str(PG_BIN / "pg_dump"), "-f", str(path), source)
    drop(server, target)
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as a:
        a.execute(f"CREATE DATABASE {target}")
    run(str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path), "-d", target)


def test_a_restore_keeps_the_default_of_the_dumped_database(server, updated, tmp_path):
    c, before = updated
    try:
        dump_and_restore(server, "dm_updated", "dm_restored", tmp_path)
        with psycopg.connect(dsn(server, "dm_restored"), autocommit=True) as r:
            # CREATE EXTENSION made this version's default; the dumped row put the old one back
            assert r.execute("SELECT pgvision.default_model()").fetchone()[0] == RAW
            assert r.execute("SELECT count(*) FROM pgvision.models_default").fetchone()[0] == 1
            assert r.execute("SELECT pgvision.embed(%s)::text", [photo("dog")]).fetchone()[0] == before["dog"]
    finally:
        drop(server, "dm_restored")


def test_a_restore_keeps_a_default_of_the_users_own(server, tmp_path):
    """pg_dump writes pgvision.models before pgvision.models_default: the user's model is
    there when the default row arrives."""
    c = database(server, "dm_own")
    try:
        c.execute("SELECT pgvision.register_model('dm_own_tiny', %s, %s)", [tiny_model(), json.dumps(TINY_SPEC)])
        c.execute("SELECT pgvision.set_default_model('dm_own_tiny')")
        before = c.execute("SELECT pgvision.embed(%s)::text", [photo("dog")]).fetchone()[0]
    finally:
        c.close()
    try:
        dump_and_restore(server, "dm_own", "dm_own_restored", tmp_path)
        with psycopg.connect(dsn(server, "dm_own_restored"), autocommit=True) as r:
            assert r.execute("SELECT pgvision.default_model()").fetchone()[0] == "dm_own_tiny"
            assert r.execute("SELECT pgvision.embed(%s)::text", [photo("dog")]).fetchone()[0] == before
    finally:
        drop(server, "dm_own", "dm_own_restored")


def test_a_spec_says_normalize_with_a_boolean(fresh):
    spec = dict(TINY_SPEC, normalize="yes")
    with pytest.raises(psycopg.Error) as info:
        fresh.execute("SELECT pgvision.register_model('dm_bad', %s, %s)", [tiny_model(), json.dumps(spec)])
    assert info.value.sqlstate == "22023" and '"normalize" must be true or false' in str(info.value)
    stored = fresh.execute("SELECT spec FROM pgvision.models WHERE name = %s", [RAW]).fetchone()[0]
    assert "normalize" not in stored  # the existing models' specs are as they were


def test_a_projection_of_a_normalised_model_is_learned_on_what_it_returns():
    """projection.append puts the source's normalisation before the projection it appends."""
    from pgvision_runtime import images, models, preprocess, projection, spec as specs

    model_dir = pathlib.Path(os.environ.get("PGVISION_MODEL_DIR", RUNTIME_MODELS))
    onnx_bytes = (model_dir / "efficientnet_lite0.onnx").read_bytes()
    spec = specs.validate(json.loads((model_dir / "efficientnet_lite0_normalized.json").read_text()))
    source = models.Model(onnx_bytes, spec, threads=1)
    batch = np.stack([preprocess.prepare(images.decode(photo(n)), spec) for n in PHOTOS])
    unit = source.run(batch)[0]
    rng = np.random.default_rng(0)
    mean, matrix = rng.normal(size=1280).astype(np.float32) * 0.01, rng.normal(size=(1280, 8)).astype(np.float32)
    new_bytes, new_spec = projection.append(onnx_bytes, spec, mean, matrix)
    assert new_spec["normalize"] is True
    got = models.Model(new_bytes, specs.validate(new_spec), threads=1).run(batch)[0]
    want = models.normalized(projection.apply(unit, mean, matrix))
    assert np.abs(got - want).max() < 1e-4
