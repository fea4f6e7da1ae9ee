"""The plain-SQL top-k the README recommends, under custom and generic plans: it reads the
HNSW index (no Sort of the whole table) and runs the model once per query.

A generic plan is what a prepared statement gets after five executions when the planner
finds it no worse, and what connection poolers and drivers that prepare every statement
can give from the first one; plan_cache_mode = force_generic_plan makes it happen at once.
"""

import re

import numpy as np
import psycopg
import pytest

from conftest import APP_ROLE, dsn
from data import photo

ROWS = 3000
K = 5

# The forms the README recommends (section "Getting started").
RECOMMENDED = {
    "scalar subquery": """
        SELECT id, class, feature <=> (SELECT pgvision.embed($1)) AS distance
        FROM gp_images ORDER BY distance LIMIT 5""",
    "scalar subquery, l2": """
        SELECT id, class, feature <-> (SELECT pgvision.embed($1)) AS distance
        FROM gp_images ORDER BY distance LIMIT 5""",
    "query_vector subquery": """
        SELECT id, class, feature <=> (SELECT pgvision.query_vector('gp_images', 'feature', $1)) AS distance
        FROM gp_images ORDER BY distance LIMIT 5""",
}
# Forms that lose the index or run the model per row under a generic plan, kept here so the
# test shows what the README warns about.
DISCOURAGED = {
    "embed in FROM": """
        SELECT id, class, feature <=> q AS distance
        FROM gp_images, pgvision.embed($1) AS q ORDER BY feature <=> q LIMIT 5""",
    "embed in ORDER BY and SELECT": """
        SELECT id, class, feature <=> pgvision.embed($1) AS distance
        FROM gp_images ORDER BY feature <=> pgvision.embed($1) LIMIT 5""",
}


@pytest.fixture(scope="module")
def table(server):
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS gp_images")
        c.execute("CREATE TABLE gp_images (id int PRIMARY KEY, class text, feature vector(1280))")
        rng = np.random.default_rng(7)
        with c.cursor().copy("COPY gp_images (id, class, feature) FROM STDIN") as copy:
            for i in range(ROWS):
                v = rng.standard_normal(1280).astype(np.float32)
                copy.write_row([i, f"c{i % 10}", "[" + ",".join("%.5g" % x for x in v) + "]"])
        c.execute("INSERT INTO gp_images VALUES (%s, 'dog', pgvision.embed(%s))", [ROWS, photo("dog")])
        c.execute("SELECT pgvision.create_index('gp_images', 'feature')")
        c.execute("CREATE INDEX gp_images_feature_l2 ON gp_images USING hnsw (feature vector_l2_ops)")
        c.execute("ANALYZE gp_images")
    return "gp_images"


@pytest.fixture
def session(server, table):
    """The app role, with function call counting on (a superuser setting, set first)."""
    with psycopg.connect(dsn(server), autocommit=True) as c:
        c.execute("SET track_functions = 'all'")
        c.execute(f"SET ROLE {APP_ROLE}")
        yield c


CALLS = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
         " WHERE schemaname = 'pgvision' AND funcname = '_embed_float4'")


def model_calls(conn, sql, plan_mode):
    """(plan text, model calls) of one EXECUTE of ``sql`` prepared under ``plan_mode``."""
    conn.execute(f"SET plan_cache_mode = {plan_mode}")
    conn.execute(f"PREPARE gp (bytea) AS {sql}")
    try:
        param = "'\\x" + photo("dog").hex() + "'"
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE gp ({param})").fetchall())
        # pg_stat_xact_user_functions holds what this backend has not yet reported (earlier
        # statements too); inside one transaction it reports nothing, so the difference
        # is this EXECUTE's (planning included)
        with conn.transaction():
            before = conn.execute(CALLS).fetchone()[0]
            rows = conn.execute(f"EXECUTE gp ({param})").fetchall()
            calls = conn.execute(CALLS).fetchone()[0] - before
        return plan, calls, rows
    finally:
        conn.execute("DEALLOCATE gp")
        conn.execute("RESET plan_cache_mode")


def uses_index(plan):
    return bool(re.search(r"Index Scan using \S*feature\S*", plan)) and "Seq Scan" not in plan


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("form", sorted(RECOMMENDED))
def test_recommended_form_reads_the_index_and_runs_the_model_once(session, form, mode):
    plan, calls, rows = model_calls(session, RECOMMENDED[form], mode)
    assert uses_index(plan), plan
    assert "Sort" not in plan, plan
    assert calls == 1, (calls, plan)
    assert len(rows) == K and rows[0][0] == ROWS  # the dog photo's own row first
    assert rows[0][2] < 1e-5 and [r[2] for r in rows] == sorted(r[2] for r in rows)


def test_discouraged_forms_do_what_the_readme_says(session):
    """The README's warning, checked: under a generic plan, embed in FROM scans and sorts
    the whole table, and embed written in SELECT and ORDER BY runs the model per row."""
    plan, calls, _ = model_calls(session, DISCOURAGED["embed in FROM"], "force_generic_plan")
    assert not uses_index(plan) and "Sort" in plan, plan
    plan, calls, _ = model_calls(session, DISCOURAGED["embed in ORDER BY and SELECT"], "force_generic_plan")
    assert calls > 1, (calls, plan)
    # with custom plans both are fine: the constant image folds into one model call
    for sql in DISCOURAGED.values():
        plan, calls, _ = model_calls(session, sql, "force_custom_plan")
        assert uses_index(plan) and calls == 1, (calls, plan)
