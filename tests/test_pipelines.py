"""The AnalyticDB surface: pipeline_create, pipeline_run, pipeline_run_dist_random."""

import numpy as np
import psycopg
import pytest

from data import photo


def test_builtin_pipeline_returns_the_feature_as_json(conn):
    result = conn.execute("SELECT pgvision.pipeline_run('general_feature_extractor', %s)",
                          [photo("dog")]).fetchone()[0]
    assert result["model"] == "efficientnet_lite0_normalized"  # the default model
    assert result["dim"] == 1280 and len(result["feature"]) == 1280
    embedded = conn.execute("SELECT pgvision.embed(%s)", [photo("dog")]).fetchone()[0].to_numpy()
    assert np.abs(np.asarray(result["feature"]) - embedded).max() < 1e-6


def test_dist_random_runs_locally_on_one_server(conn):
    a, b = conn.execute(
        "SELECT pgvision.pipeline_run_dist_random('general_feature_extractor', %s),"
        " pgvision.pipeline_run('general_feature_extractor', %s)", [photo("kite")] * 2).fetchone()
    assert a == b


def test_feature_of_a_result_is_a_vector(conn):
    v, e = conn.execute(
        "SELECT pgvision.feature(pgvision.pipeline_run('general_feature_extractor', %s)),"
        " pgvision.embed(%s)", [photo("eagle")] * 2).fetchone()
    assert np.abs(v.to_numpy() - e.to_numpy()).max() < 1e-6


def test_custom_pipelines(admin):
    admin.execute("SELECT pgvision.pipeline_create('unit_features', 'efficientnet_lite0',"
                  " '{\"normalize\": true}')")
    admin.execute("SELECT pgvision.pipeline_create('logits_of', 'efficientnet_lite0',"
                  " '{\"output\": \"logits\"}')")
    try:
        unit = admin.execute("SELECT pgvision.pipeline_run('unit_features', %s)",
                             [photo("dog")]).fetchone()[0]
        assert unit["normalized"] is True
        assert abs(np.linalg.norm(unit["feature"]) - 1.0) < 1e-6
        logits = admin.execute("SELECT pgvision.pipeline_run('logits_of', %s)",
                               [photo("dog")]).fetchone()[0]
        assert logits["output"] == "logits" and len(logits["logits"]) == 1000
        with pytest.raises(psycopg.Error) as info:
            admin.execute("SELECT pgvision.pipeline_create('unit_features', 'efficientnet_lite0')")
        assert info.value.sqlstate == "42710"
    finally:
        admin.execute("SELECT pgvision.pipeline_drop('unit_features')")
        admin.execute("SELECT pgvision.pipeline_drop('logits_of')")


@pytest.mark.parametrize("args,sqlstate", [
    ("'p1', 'efficientnet_lite0', '{\"colour\": \"red\"}'", "22023"),
    ("'p1', 'efficientnet_lite0', '{\"output\": \"pixels\"}'", "22023"),
    ("'p1', 'efficientnet_lite0', '{\"normalize\": 1}'", "22023"),
    ("'p1', 'no_such_model', '{}'", "42704"),
    ("'bad name!', 'efficientnet_lite0', '{}'", "22023"),
])
def test_pipeline_create_refuses_bad_input(admin, args, sqlstate):
    with pytest.raises(psycopg.Error) as info:
        admin.execute(f"SELECT pgvision.pipeline_create({args})")
    assert info.value.sqlstate == sqlstate


def test_builtin_pipeline_cannot_be_dropped(admin):
    with pytest.raises(psycopg.Error) as info:
        admin.execute("SELECT pgvision.pipeline_drop('general_feature_extractor')")
    assert info.value.sqlstate == "2BP01"
