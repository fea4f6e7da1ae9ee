"""pgvision.find_duplicates: exact copies, re-encodes and look-alikes, told apart."""

import io

import psycopg
import pytest
from PIL import Image

from data import PHOTOS, Fashion, encode, photo


def jpeg(img, quality=90):
    return encode(img.convert("RGB"), "JPEG", quality=quality)


@pytest.fixture(scope="module")
def library(server):
    """Photos with planted duplicates of each kind, among Fashion-MNIST thumbnails."""
    from conftest import APP_ROLE, dsn

    dog = Image.open(io.BytesIO(photo("dog"))).convert("RGB")
    eagle = Image.open(io.BytesIO(photo("eagle"))).convert("RGB")
    w, h = dog.size
    rows = [(n, photo(n)) for n in PHOTOS] + [
        ("dog same bytes", photo("dog")),
        ("dog png", encode(dog)),                                     # the same pixels
        ("eagle jpeg q40", jpeg(eagle, 40)),
        ("eagle half size", jpeg(eagle.resize((eagle.width // 2, eagle.height // 2)))),
        ("dog left half", jpeg(dog.crop((0, 0, w // 2, h)))),           # a look-alike, not a copy
    ]
    fashion = Fashion("test")
    rows += [(f"fashion-{i}", fashion.png(i)) for i in fashion.balanced(10)]
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS library")
        c.execute("CREATE TABLE library (id int PRIMARY KEY, name text, image bytea, feature vector(1280),"
                  " phash bit(64) GENERATED ALWAYS AS (pgvision.phash(image)) STORED)")
        with c.cursor() as cur:
            cur.executemany("INSERT INTO library (id, name, image) VALUES (%s, %s, %s)",
                            [(i + 1, n, d) for i, (n, d) in enumerate(rows)])
        c.execute("UPDATE library SET feature = pgvision.embed(image)")
        c.execute("SELECT pgvision.create_index('library', 'feature')")
        c.execute("CREATE INDEX ON library USING hnsw (phash bit_hamming_ops)")
    return {n: str(i + 1) for i, (n, _) in enumerate(rows)}


def groups(conn, *args, **kwargs):
    named = "".join(f", {k} => %s" for k in kwargs)
    rows = conn.execute(f"SELECT group_no, id, verdict, distance FROM pgvision.find_duplicates('library'{named})",
                        list(kwargs.values())).fetchall()
    by_group = {}
    for g, i, v, d in rows:
        by_group.setdefault(g, {})[i] = (v, d)
    return rows, by_group


def group_of(by_group, row):
    return next((members for members in by_group.values() if row in members), None)


def test_each_kind_of_duplicate_gets_its_verdict(conn, library):
    rows, by_group = groups(conn)
    dog = group_of(by_group, library["dog"])
    assert dog[library["dog same bytes"]] == ("exact", 0.0)
    assert dog[library["dog png"]] == ("exact", 0.0)
    assert dog[library["dog"]][0] == "exact"
    assert library["dog left half"] not in dog
    eagle = group_of(by_group, library["eagle"])
    assert set(eagle) == {library["eagle"], library["eagle jpeg q40"], library["eagle half size"]}
    assert {eagle[library[n]][0] for n in ("eagle jpeg q40", "eagle half size")} == {"near"}
    assert all(0 <= eagle[library[n]][1] <= 16 for n in ("eagle jpeg q40", "eagle half size"))
    # photos without a copy are in no group, and groups are numbered from 1 in key order
    for n in ("giraffe", "horses", "kite", "person", "scream"):
        assert group_of(by_group, library[n]) is None
    numbers = [g for g, *_ in rows]
    assert numbers == sorted(numbers) and numbers[0] == 1


def test_thresholds_are_settable(conn, library):
    # at 0 bits only equal hashes are near
    rows, _ = groups(conn, near_bits=0)
    assert all(d == 0 for _, _, v, d in rows if v == "near")
    assert any(v == "near" and d > 0 for _, _, v, d in groups(conn)[0])  # and at 8, more are
    # a wide similar threshold takes the dog's left half in, as similar
    _, by_group = groups(conn, similar_distance=0.6)
    dog = group_of(by_group, library["dog"])
    assert dog[library["dog left half"]][0] == "similar"


def test_a_near_link_is_confirmed_pixel_by_pixel(conn, library):
    """Where the images are in the table, a near link needs their small grey versions to
    agree: at near_pixels 0 only identical pixels would do, so the eagle's copies (a few
    grey levels apart at most) fall back to similar or to no group."""
    a, b = (conn.execute("SELECT image FROM library WHERE id = %s", [library[n]]).fetchone()[0]
            for n in ("eagle", "eagle jpeg q40"))
    apart = conn.execute("SELECT pgvision._pixel_distance(%s, %s)", [a, b]).fetchone()[0]
    assert 0 < apart < 3
    assert conn.execute("SELECT pgvision._pixel_distance(%s, %s)", [a, a]).fetchone()[0] == 0
    assert conn.execute("SELECT pgvision._pixel_distance(%s, 'junk'::bytea)", [a]).fetchone()[0] is None
    _, by_group = groups(conn, near_pixels=0)
    eagle = group_of(by_group, library["eagle"]) or {}
    assert all(v != "near" for v, _ in eagle.values())
    # without the pixel check, the tighter hash and feature thresholds decide alone
    _, by_group = groups(conn, near_pixels=None)
    eagle = group_of(by_group, library["eagle"])
    assert {eagle[library[n]][0] for n in ("eagle jpeg q40", "eagle half size")} == {"near"}
    assert all(eagle[library[n]][1] <= 8 for n in ("eagle jpeg q40", "eagle half size"))


def test_without_hash_or_image_columns(conn, library):
    conn.execute("DROP TABLE IF EXISTS library_plain")
    conn.execute("CREATE TABLE library_plain AS SELECT id, name, feature FROM library")
    conn.execute("ALTER TABLE library_plain ADD PRIMARY KEY (id)")
    rows = conn.execute("SELECT id, verdict FROM pgvision.find_duplicates('library_plain')").fetchall()
    verdicts = dict(rows)
    # the same pixels still show as equal features; without hashes there is no near tier
    assert verdicts[library["dog png"]] == "exact"
    assert "near" not in verdicts.values()


def test_bad_arguments(conn, library):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        groups(conn, near_bits=65)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        groups(conn, similar_distance=3.0)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        groups(conn, neighbours=0)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        groups(conn, near_pixels=256)
    with pytest.raises(psycopg.errors.UndefinedColumn):
        groups(conn, hash_column="nope")
    with pytest.raises(psycopg.errors.DatatypeMismatch):
        groups(conn, image_column="name")
    conn.execute("DROP TABLE IF EXISTS library_nokey")
    conn.execute("CREATE TABLE library_nokey AS SELECT * FROM library")
    with pytest.raises(psycopg.errors.InvalidTableDefinition):
        conn.execute("SELECT * FROM pgvision.find_duplicates('library_nokey')")
