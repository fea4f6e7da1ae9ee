"""Paths to the server's code and files, tried as a plain role and as pgvision_admin: the
runtime folder, the registry, model files, and the settings that bound what a role spends."""

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import psycopg
import pytest
from onnx import TensorProto, helper

from conftest import APP_ROLE, dsn
from data import photo
from test_registry import TINY_SPEC, tiny_model
from test_security import curator  # noqa: F401  (the pgvision_admin member fixture)

DOG = photo("dog")
PYDIR = "python%d.%d" % sys.version_info[:2]


def runtime_path(c):
    return c.execute("SELECT pgvision.runtime_info() ->> 'runtime_path'").fetchone()[0]


@contextlib.contextmanager
def server_setting(server, name, value):
    """``name = value`` for the whole server (ALTER SYSTEM and a reload), as an administrator
    sets it; new backends see it once this returns."""
    def apply(sql, expect):
        with psycopg.connect(dsn(server), autocommit=True) as c:
            c.execute("LOAD 'pgvision'")  # PostgreSQL 15 knows a library's settings once it is loaded
            c.execute(sql)
            c.execute("SELECT pg_reload_conf()")
        for _ in range(100):
            with psycopg.connect(dsn(server), autocommit=True) as c:
                c.execute("LOAD 'pgvision'")
                if c.execute("SELECT current_setting(%s)", [name]).fetchone()[0] == expect:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{name} did not become {expect!r}")

    with psycopg.connect(dsn(server), autocommit=True) as c:
        c.execute("LOAD 'pgvision'")
        before = c.execute("SELECT reset_val FROM pg_settings WHERE name = %s", [name]).fetchone()[0]
    literal = "'" + str(value).replace("'", "''") + "'"
    apply(f"ALTER SYSTEM SET {name} TO {literal}", str(value))
    try:
        yield
    finally:
        apply(f"ALTER SYSTEM RESET {name}", before)


def fresh(server, user=APP_ROLE):
    return psycopg.connect(dsn(server, user=user), autocommit=True)


# ------------------------------------------------------------------ the runtime folder

def test_a_plain_role_cannot_point_the_server_at_other_code(server, tmp_path):
    with fresh(server) as c:
        # before pgvision.so is loaded the name is a placeholder any role can SET; loading
        # the library drops it, so the runtime still comes from the installed folder
        c.execute("SET pgvision.runtime_path = '/tmp/elsewhere'")
        installed = runtime_path(c)
        assert installed != "/tmp/elsewhere"
        with pytest.raises(psycopg.Error) as info:
            c.execute("SET pgvision.runtime_path = '/tmp/elsewhere'")
        assert info.value.sqlstate == "55P02"  # set only where the administrator writes


def test_a_superuser_cannot_set_the_runtime_folder_per_session(admin):
    admin.execute("LOAD 'pgvision'")
    with pytest.raises(psycopg.Error) as info:
        admin.execute("SET pgvision.runtime_path = '/usr/local/lib'")
    assert info.value.sqlstate == "55P02"
    row = admin.execute("SELECT context FROM pg_settings WHERE name = 'pgvision.runtime_path'").fetchone()
    assert row == ("sighup",)


def test_the_runtime_folder_is_resolved_once_so_a_swapped_link_runs_nothing(server, admin, tmp_path):
    """The attack of the issue: a link in a folder another OS account owns points at the real
    runtime while the checks run, then at planted code before onnxruntime is imported."""
    with fresh(server) as c:
        real = runtime_path(c)
    home = pathlib.Path(tempfile.mkdtemp(prefix="pgvision-nobody-", dir="/tmp"))
    marker = home / "planted-ran"
    planted = home / "planted"
    site = planted / "venv" / "lib" / PYDIR / "site-packages"
    try:
        shutil.copytree(pathlib.Path(real) / "venv" / "lib" / PYDIR / "site-packages" / "pgvision_runtime",
                        site / "pgvision_runtime")
        (site / "onnxruntime").mkdir(parents=True)
        (site / "onnxruntime" / "__init__.py").write_text(
            f"open({str(marker)!r}, 'w').write('ran')\nraise ImportError('planted')\n")
        link = home / "runtime"
        link.symlink_to(real)
        home.chmod(0o755)
        subprocess.run(["chown", "-R", "nobody", str(home)], check=True)
        with server_setting(server, "pgvision.runtime_path", str(link)):
            with fresh(server) as c:
                # the checks pass and the runtime is imported, onnxruntime not yet
                with pytest.raises(psycopg.Error) as info:
                    c.execute("SELECT pgvision.embed(%s, 'no_such_model')", [DOG])
                assert info.value.sqlstate == "42704"
                link.unlink()
                link.symlink_to(planted)
                assert c.execute("SELECT vector_dims(pgvision.embed(%s))", [DOG]).fetchone()[0] == 1280
                assert runtime_path(c) == real
            assert not marker.exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("case", ["world-writable parent", "not owned by root or postgres"])
def test_every_folder_up_to_the_root_is_checked(server, case):
    # not under /tmp or /var/tmp, which are open to every account's writes themselves
    base = pathlib.Path(tempfile.mkdtemp(prefix="pgvision-test-runtime-", dir="/usr/local/lib"))
    try:
        os.chmod(base, 0o755)
        root = base / "open" / "runtime"
        package = root / "venv" / "lib" / PYDIR / "site-packages" / "pgvision_runtime"
        package.mkdir(parents=True)
        for p in [base / "open", *(base / "open").rglob("*")]:
            p.chmod(0o755)
        if case == "world-writable parent":
            (base / "open").chmod(0o777)  # the runtime's own folders are fine, a parent is not
            culprit = base / "open"
        else:
            subprocess.run(["chown", "nobody", str(root / "venv")], check=True)
            culprit = root / "venv"
        with server_setting(server, "pgvision.runtime_path", str(root)):
            with fresh(server) as c:
                with pytest.raises(psycopg.Error) as info:
                    c.execute("SELECT pgvision.embed(%s)", [DOG])
        assert info.value.sqlstate == "42501"
        assert f'"{culprit}"' in info.value.diag.message_primary
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("path", ["/nonexistent/pgvision", "/usr/local/lib/pgvision/[0-9]*",
                                  "/usr/local/lib/pgvision/*"])
def test_a_missing_runtime_folder_is_a_clear_error(server, path):
    with server_setting(server, "pgvision.runtime_path", path):
        with fresh(server) as c:
            with pytest.raises(psycopg.Error) as info:
                c.execute("SELECT pgvision.embed(%s)", [DOG])
    assert info.value.sqlstate == "58P01", str(info.value)
    assert info.value.diag.message_primary.startswith("pgvision: runtime not found")


# ------------------------------------------------------------------ models are data, never paths

def external_data_model(location):
    """The tiny model with one weight stored 'elsewhere': onnxruntime would read the file."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 1.0, 1.0])
    w.data_location = TensorProto.EXTERNAL
    del w.float_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", "12")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["q"]),
             helper.make_node("Mul", ["q", "w"], ["f"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 3])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


RAW_INSERT = ("INSERT INTO pgvision.models (name, sha256, dim, spec, onnx) "
              "VALUES (%s, repeat('0', 64), 3, %s, %s)")


@pytest.mark.parametrize("location", ["global/1260", "pg_hba.conf", "/etc/passwd"])
def test_pgvision_admin_cannot_read_server_files_through_a_raw_insert(curator, location):
    with pytest.raises(psycopg.Error) as info:
        curator.execute(RAW_INSERT, ["peek", json.dumps(TINY_SPEC), external_data_model(location)])
    assert info.value.sqlstate == "42501"
    assert "references external data" in info.value.diag.message_primary


def test_a_raw_insert_gets_register_models_checks_and_its_computed_columns(curator):
    row = curator.execute(RAW_INSERT + " RETURNING sha256, dim, spec",
                          ["raw_tiny", json.dumps(TINY_SPEC), tiny_model()]).fetchone()
    try:
        import hashlib
        assert row[0] == hashlib.sha256(tiny_model()).hexdigest() and row[1] == 3
        assert row[2]["fit"] == "stretch"  # defaults filled in as register_model does
    finally:
        curator.execute("SELECT pgvision.drop_model('raw_tiny')")


@pytest.mark.parametrize("sql, sqlstate", [
    ("DELETE FROM pgvision.models WHERE builtin", "2BP01"),
    ("DELETE FROM pgvision.pipelines WHERE builtin", "2BP01"),
    ("UPDATE pgvision.models SET dim = 1", "42501"),
    ("UPDATE pgvision.pipelines SET model = 'x'", "42501"),
    ("TRUNCATE pgvision.models", "42501"),
    ("INSERT INTO pgvision.models (name, sha256, dim, spec, onnx, builtin) "
     "SELECT 'pinned', sha256, dim, spec, onnx, true FROM pgvision.models", "42501"),
    ("INSERT INTO pgvision.pipelines (name, model, options) VALUES ('p', 'efficientnet_lite0', '{\"output\": \"file\"}')",
     "22023"),
])
def test_pgvision_admin_writes_the_registry_only_through_its_checks(curator, sql, sqlstate):
    with pytest.raises(psycopg.Error) as info:
        curator.execute(sql)
    assert info.value.sqlstate == sqlstate, str(info.value)


def test_a_registered_model_never_changes_even_for_a_superuser(admin):
    with pytest.raises(psycopg.Error) as info:
        admin.execute("UPDATE pgvision.models SET dim = dim")
    assert info.value.sqlstate == "0A000"
    assert "new name" in info.value.diag.message_hint


@pytest.fixture
def planted_row(admin):
    """Plant a row as a superuser could by bypassing the trigger, as a pre-fix database or a
    hand-edited dump may hold one; the backend must still refuse it at load time."""
    names = []

    def plant(name, onnx_bytes, spec, sha=None):
        import hashlib
        admin.execute("ALTER TABLE pgvision.models DISABLE TRIGGER registry_write")
        try:
            admin.execute("INSERT INTO pgvision.models (name, sha256, dim, spec, onnx) VALUES (%s, %s, 3, %s, %s)",
                          [name, sha or hashlib.sha256(onnx_bytes).hexdigest(), json.dumps(spec), onnx_bytes])
        finally:
            admin.execute("ALTER TABLE pgvision.models ENABLE TRIGGER registry_write")
        names.append(name)
    yield plant
    admin.execute("ALTER TABLE pgvision.models DISABLE TRIGGER registry_write")
    try:
        admin.execute("DELETE FROM pgvision.models WHERE name = ANY(%s)", [names])
    finally:
        admin.execute("ALTER TABLE pgvision.models ENABLE TRIGGER registry_write")


@pytest.mark.parametrize("share", ["on", "off"])
def test_a_model_is_checked_again_when_a_backend_loads_it(server, planted_row, share):
    planted_row(f"planted_{share}", external_data_model("global/1260"), TINY_SPEC)
    with psycopg.connect(dsn(server), autocommit=True, options=f"-c pgvision.share_models={share}") as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute(f"SELECT pgvision.embed(%s, 'planted_{share}')", [DOG])
    assert info.value.sqlstate == "42501"
    assert "references external data" in info.value.diag.message_primary


@pytest.mark.parametrize("name, spec, sha, words", [
    ("no_input", {"size": [8, 8], "outputs": {"feature": "f"}}, None, '"input" must name'),
    ("no_size", {"input": "x", "outputs": {"feature": "f"}}, None, '"size" must be'),
    ("not_object", [1, 2], None, "expected a JSON object"),
    ("wrong_sha", TINY_SPEC, "0" * 64, "does not match its sha256"),
])
def test_a_broken_registry_row_is_a_clear_error(conn, planted_row, name, spec, sha, words):
    planted_row(name, tiny_model(), spec, sha)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT pgvision.embed(%s, %s)", [DOG, name])
    assert info.value.sqlstate == "22023", str(info.value)
    assert words in info.value.diag.message_primary and name in info.value.diag.message_primary
    assert "Traceback" not in info.value.diag.message_primary


# ------------------------------------------------------------------ one model per name and spec

def test_same_bytes_with_another_spec_are_another_model(admin, conn):
    onnx_bytes, spec = admin.execute(
        "SELECT onnx, spec FROM pgvision.models WHERE name = 'efficientnet_lite0'").fetchone()
    variants = {"lite0_logits": {**spec, "outputs": {"feature": "logits"}},
                "lite0_bgr": {**spec, "color": "BGR"},
                "lite0_mean": {**spec, "mean": [0.4, 0.5, 0.6]}}
    try:
        for name, variant in variants.items():
            admin.execute("SELECT pgvision.register_model(%s, %s, %s, NULL)", [name, onnx_bytes, json.dumps(variant)])
        # the built-in first, so that its loaded model is cached in this backend
        base = conn.execute("SELECT pgvision.embed(%s)::text", [DOG]).fetchone()[0]
        assert conn.execute("SELECT vector_dims(pgvision.embed(%s, 'lite0_logits'))", [DOG]).fetchone()[0] == 1000
        for name in ("lite0_bgr", "lite0_mean"):
            other = conn.execute("SELECT pgvision.embed(%s, %s)::text", [DOG, name]).fetchone()[0]
            assert other != base, name
        assert conn.execute("SELECT pgvision.embed(%s)::text", [DOG]).fetchone()[0] == base
    finally:
        for name in variants:
            admin.execute("DELETE FROM pgvision.models WHERE name = %s", [name])


# ------------------------------------------------------------------ bad input, clear errors

@pytest.mark.parametrize("sql, args, sqlstate, words", [
    ("SELECT pgvision.embed_batch(ARRAY[[%s::bytea]])", [DOG], "22023", "one-dimensional"),
    ("SELECT pgvision.register_model('deep', %s, %s::jsonb)", [tiny_model(), "[" * 5000 + "]" * 5000],
     "22023", "nested too deeply"),
    ("SELECT pgvision.pipeline_create('deep', 'efficientnet_lite0', %s::jsonb)",
     ['{"a":' * 3000 + "1" + "}" * 3000], "22023", "nested too deeply"),
])
def test_bad_arguments_get_pgvision_errors(admin, sql, args, sqlstate, words):
    with pytest.raises(psycopg.Error) as info:
        admin.execute(sql, args)
    assert info.value.sqlstate == sqlstate, str(info.value)
    assert words in info.value.diag.message_primary
    assert info.value.diag.message_primary.startswith("pgvision: ")


# ------------------------------------------------------------------ settings and their ceilings

SETTINGS = {  # name: (context, has a superuser ceiling)
    "pgvision.runtime_path": "sighup",
    "pgvision.threads": "user", "pgvision.threads_limit": "superuser",
    "pgvision.batch_size": "user", "pgvision.batch_size_limit": "superuser",
    "pgvision.max_pixels": "user", "pgvision.max_pixels_limit": "superuser",
    "pgvision.max_image_bytes": "user", "pgvision.max_image_bytes_limit": "superuser",
    "pgvision.max_model_bytes": "superuser", "pgvision.share_models": "superuser",
    "pgvision.keep_batch_memory": "user", "pgvision.partial_results": "user",
}


def test_settings_are_defined_with_descriptions(conn):
    conn.execute("SELECT pgvision.embed(%s)", [DOG])  # loads pgvision.so
    rows = dict(conn.execute("SELECT name, context FROM pg_settings WHERE name LIKE 'pgvision.%%'").fetchall())
    assert rows == SETTINGS
    assert not conn.execute("SELECT name FROM pg_settings WHERE name LIKE 'pgvision.%%'"
                            " AND coalesce(short_desc, '') = ''").fetchall()


@pytest.mark.parametrize("name, value", [
    ("pgvision.threads_limit", "256"), ("pgvision.batch_size_limit", "4096"),
    ("pgvision.max_pixels_limit", "2000000000"), ("pgvision.max_image_bytes_limit", "1000000000"),
    ("pgvision.max_model_bytes", "2000000000"), ("pgvision.share_models", "off"),
])
def test_a_plain_role_cannot_raise_a_ceiling(server, name, value):
    with fresh(server) as c:
        c.execute(f"SET {name} = {value}")  # a placeholder: pgvision.so is not loaded yet
        before = c.execute("SELECT pgvision.runtime_info() -> 'settings'").fetchone()[0]
        with pytest.raises(psycopg.Error) as info:
            c.execute(f"SET {name} = {value}")
        assert info.value.sqlstate == "42501"
        with pytest.raises(psycopg.Error):
            c.execute(f"ALTER ROLE {APP_ROLE} SET {name} = {value}")
    with fresh(server) as c:
        assert c.execute("SELECT pgvision.runtime_info() -> 'settings'").fetchone()[0] == before


@pytest.mark.parametrize("name, value", [
    ("pgvision.threads", "256"), ("pgvision.batch_size", "200"),  # 200: 2 GB of activations
    ("pgvision.max_pixels", "100000000"), ("pgvision.max_image_bytes", "100000000"),
])
def test_a_plain_role_cannot_go_past_a_ceiling(conn, name, value):
    conn.execute("SELECT pgvision.embed(%s)", [DOG])
    with pytest.raises(psycopg.Error) as info:
        conn.execute(f"SET {name} = {value}")
    assert info.value.sqlstate == "22023"
    assert f"cannot be larger than {name}_limit" in info.value.diag.message_primary
    # lowering is every role's right
    conn.execute(f"SET {name} = 1")
    conn.execute(f"RESET {name}")


def test_a_value_from_elsewhere_is_cut_to_the_ceiling(server, admin):
    admin.execute("LOAD 'pgvision'")
    admin.execute(f"ALTER ROLE {APP_ROLE} SET pgvision.batch_size = 48")  # under the default ceiling
    try:
        with server_setting(server, "pgvision.batch_size_limit", 16):
            with fresh(server) as c:
                settings = c.execute("SELECT pgvision.runtime_info() -> 'settings'").fetchone()[0]
        assert settings["pgvision.batch_size"] == 16
    finally:
        admin.execute(f"ALTER ROLE {APP_ROLE} RESET pgvision.batch_size")


def test_threads_follow_their_ceiling(server):
    with server_setting(server, "pgvision.threads_limit", 1):
        with fresh(server) as c:
            assert c.execute("SELECT pgvision.runtime_info() -> 'settings' -> 'pgvision.threads'").fetchone()[0] == 1
            with pytest.raises(psycopg.Error):
                c.execute("SET pgvision.threads = 2")


def test_alter_system_takes_pgvision_settings(server, admin):
    with fresh(server, "postgres") as c:
        c.execute("SELECT pgvision.embed(%s)", [DOG])  # any pgvision call loads the library
        c.execute("ALTER SYSTEM SET pgvision.threads = 1")
        with pytest.raises(psycopg.Error) as info:
            c.execute("ALTER SYSTEM SET pgvision.threads = 'many'")
        assert info.value.sqlstate == "22023"
        c.execute("ALTER SYSTEM RESET pgvision.threads")
    with fresh(server, "postgres") as c:
        c.execute("LOAD 'pgvision'")
        c.execute("ALTER SYSTEM SET pgvision.max_pixels_limit = 1000000")
        c.execute("ALTER SYSTEM RESET pgvision.max_pixels_limit")


@pytest.mark.parametrize("name, value", [("pgvision.max_pixels", "'lots'"), ("pgvision.threads", "-1"),
                                         ("pgvision.share_models", "'sometimes'"),
                                         ("pgvision.batch_size", "0")])
def test_a_bad_value_is_refused_when_set(server, name, value):
    with fresh(server) as c:
        c.execute(f"SET {name} = {value}")  # before pgvision.so: a placeholder, dropped on load
        settings = c.execute("SELECT pgvision.runtime_info() -> 'settings'").fetchone()[0]
        assert c.execute("SELECT vector_dims(pgvision.embed(%s))", [DOG]).fetchone()[0] == 1280
        with pytest.raises(psycopg.Error) as info:
            c.execute(f"SET {name} = {value}")
        assert info.value.sqlstate in ("22023", "42501"), str(info.value)
    with fresh(server) as c:
        assert c.execute("SELECT pgvision.runtime_info() -> 'settings'").fetchone()[0] == settings


# ------------------------------------------------------------------ other roles' data

@pytest.fixture
def secret(admin):
    """A table of the superuser's that the plain role may not read or change."""
    admin.execute("DROP TABLE IF EXISTS public.secret_images")
    admin.execute("CREATE TABLE public.secret_images (id int PRIMARY KEY, image bytea, feature vector(1280))")
    admin.execute("INSERT INTO public.secret_images VALUES (1, %s, pgvision.embed(%s))", [DOG, DOG])
    admin.execute("REVOKE ALL ON public.secret_images FROM PUBLIC")
    yield "public.secret_images"
    admin.execute("DROP TABLE IF EXISTS public.secret_images")


@pytest.mark.parametrize("sql", [
    "SELECT * FROM pgvision.search('public.secret_images', %(dog)s)",
    "SELECT * FROM pgvision.search_like('public.secret_images', '1')",
    "SELECT * FROM pgvision.search_batch('public.secret_images', ARRAY[%(dog)s])",
    "CALL pgvision.embed_table('public.secret_images', 'image', 'feature')",
    "SELECT pgvision.enable_auto_embed('public.secret_images', 'image', 'feature')",
    "SELECT pgvision.disable_auto_embed('public.secret_images')",
    "SELECT pgvision.create_index('public.secret_images', 'feature')",
    "SELECT pgvision.create_ann_index('public.secret_images', 'feature', '{\"dim\": \"1280\"}')",
    "SELECT pgvision._install_builtin_models()",
    "SELECT pgvision._embed_table_batch('public.secret_images', 'image', 'feature', 'efficientnet_lite0', 8,"
    " 'id', false, NULL, 'public')",
])
def test_a_plain_role_reaches_no_table_it_may_not(conn, secret, sql):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, {"dog": DOG})
    assert info.value.sqlstate == "42501", str(info.value)


def test_a_search_filter_runs_with_the_callers_privileges(conn, secret, admin):
    conn.execute("CREATE TABLE IF NOT EXISTS mine (id int PRIMARY KEY, image bytea, feature vector(1280))")
    try:
        conn.execute("INSERT INTO mine VALUES (1, %s, pgvision.embed(%s)) ON CONFLICT DO NOTHING", [DOG, DOG])
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT * FROM pgvision.search('mine', %s, filter => "
                         "'EXISTS (SELECT FROM public.secret_images)')", [DOG])
        assert info.value.sqlstate == "42501"
    finally:
        conn.execute("DROP TABLE IF EXISTS mine")


def test_backfill_bookkeeping_of_tables_a_role_cannot_read_is_invisible(conn, secret, admin):
    admin.execute("CALL pgvision.embed_table('public.secret_images', 'image', 'feature')")
    assert admin.execute("SELECT count(*) FROM pgvision.backfill_progress WHERE tbl = %s::regclass",
                         [secret]).fetchone()[0] == 1
    assert not conn.execute("SELECT 1 FROM pgvision.backfill_progress WHERE tbl = %s::regclass",
                            [secret]).fetchone()


@pytest.mark.parametrize("sql", [
    "ALTER SYSTEM SET pgvision.runtime_path = '/tmp'",
    "LOAD '/tmp/anything'",
    "SELECT pg_read_binary_file('global/1260')",
    "CREATE FUNCTION evil() RETURNS int LANGUAGE plpython3u AS 'return 1'",
])
def test_pgvision_admin_is_no_superuser(curator, sql):
    with pytest.raises(psycopg.Error) as info:
        curator.execute(sql)
    assert info.value.sqlstate == "42501", str(info.value)


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 64, "a b", "x;drop"])
def test_model_names_are_names_not_paths(curator, name):
    with pytest.raises(psycopg.Error) as info:
        curator.execute("SELECT pgvision.register_model(%s, %s, %s)", [name, tiny_model(), json.dumps(TINY_SPEC)])
    assert info.value.sqlstate == "22023", str(info.value)


@pytest.mark.parametrize("sql, sqlstate", [
    ("INSERT INTO pgvision.shards (server) VALUES ('no_such_server')", "42704"),
    ("UPDATE pgvision.shards SET added = now()", "42501"),
])
def test_pgvision_admin_writes_the_shard_registry_only_through_its_checks(curator, sql, sqlstate):
    with pytest.raises(psycopg.Error) as info:
        curator.execute(sql)
    assert info.value.sqlstate == sqlstate, str(info.value)
