"""pgvision.classify with the ImageNet-1k head of the default model."""

import pytest

from data import photo


@pytest.fixture(scope="module")
def label_index(server):
    import psycopg

    from conftest import dsn
    with psycopg.connect(dsn(server)) as c:
        labels = c.execute("SELECT labels FROM pgvision.models WHERE name = 'efficientnet_lite0'"
                           ).fetchone()[0]
    assert len(labels) == 1000
    return {name: i for i, name in enumerate(labels)}


def test_dog_photo_is_a_dog_breed(conn, label_index):
    rows = conn.execute("SELECT label, score FROM pgvision.classify(%s)", [photo("dog")]).fetchall()
    assert len(rows) == 5
    # ImageNet-1k classes 151..268 are the dog breeds
    assert 151 <= label_index[rows[0][0]] <= 268, rows


def test_eagle_photo_is_a_bird_of_prey(conn):
    label, _ = conn.execute("SELECT label, score FROM pgvision.classify(%s, 1)",
                            [photo("eagle")]).fetchone()
    assert label in ("bald eagle", "kite", "vulture"), label


def test_scores_are_probabilities_in_order(conn, label_index):
    rows = conn.execute("SELECT label, score FROM pgvision.classify(%s, 1000)",
                        [photo("horses")]).fetchall()
    scores = [r[1] for r in rows]
    assert len(rows) == 1000
    assert scores == sorted(scores, reverse=True)
    assert abs(sum(scores) - 1.0) < 1e-3
    # ImageNet repeats two short names ("crane", "maillot"), so compare as a multiset
    assert {r[0] for r in rows} == set(label_index)
