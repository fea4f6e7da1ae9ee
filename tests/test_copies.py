"""pgvision.find_copies: the original of an edited copy, among look-alikes, as an ordinary role."""

import io
import pathlib
import sys

import psycopg
import pytest
from PIL import Image

from data import PHOTOS, Fashion, photo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import mixed  # noqa: E402  (the edits the benchmark measures)

EDITS = ["jpeg q15", "crop 70% off-centre", "crop 80% centre", "mirror", "grey", "brightness/contrast", "blur r3",
         "downscale 1/3", "rotate 90", "screenshot", "border", "caption + sticker", "perspective", "rotate 10"]


@pytest.fixture(scope="module")
def gallery(server):
    """The darknet photos, cut-outs of them and 150 Fashion-MNIST thumbnails, with features,
    hashes and both indexes, in a table of app's."""
    from conftest import APP_ROLE, dsn

    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS gallery")
        c.execute("CREATE TABLE gallery (id int PRIMARY KEY, name text, image bytea, feature vector(1280),"
                  " phash bit(64) GENERATED ALWAYS AS (pgvision.phash(image)) STORED)")
        rows = [(n, photo(n)) for n in PHOTOS]
        for n in PHOTOS:  # look-alikes: the left and right halves of every photo
            img = Image.open(io.BytesIO(photo(n))).convert("RGB")
            w, h = img.size
            for side, box in (("left", (0, 0, w // 2, h)), ("right", (w // 2, 0, w, h))):
                rows.append((f"{n}-{side}", mixed.jpeg(img.crop(box))))
        fashion = Fashion("test")
        rows += [(f"fashion-{i}", fashion.png(i)) for i in fashion.balanced(15)]
        with c.cursor() as cur:
            cur.executemany("INSERT INTO gallery (id, name, image) VALUES (%s, %s, %s)",
                            [(i, n, d) for i, (n, d) in enumerate(rows)])
        c.execute("UPDATE gallery SET feature = pgvision.embed(image)")
        c.execute("SELECT pgvision.create_index('gallery', 'feature')")
        c.execute("CREATE INDEX ON gallery USING hnsw (phash bit_hamming_ops)")
    return "gallery"


def copies(conn, image, *args, **kwargs):
    named = "".join(f", {k} => %s" for k in kwargs)
    positional = "".join(", %s" for _ in args)
    return conn.execute(f"SELECT rank, id, score, verdict, item FROM pgvision.find_copies('gallery', %s{positional}{named})",
                        [image, *args, *kwargs.values()]).fetchall()


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("name", ["dog", "eagle", "horses", "person"])
def test_the_original_of_an_edited_copy_comes_first(conn, gallery, name, edit):
    query = mixed.edited(name, photo(name), edit)
    rows = copies(conn, query, 5)
    assert rows[0][4]["name"] == name, [(r[4]["name"], round(r[2], 3), r[3]) for r in rows]
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a[2] >= b[2] for a, b in zip(rows, rows[1:]))


def test_verdicts(conn, gallery):
    exact = copies(conn, photo("dog"), 3)
    assert (exact[0][4]["name"], exact[0][3]) == ("dog", "exact")
    assert exact[0][1] == str(PHOTOS.index("dog"))
    near = copies(conn, mixed.edited("dog", photo("dog"), "jpeg q15"), 3)
    assert (near[0][4]["name"], near[0][3]) == ("dog", "near")
    # a photo that is not in the table: its nearest rows are look-alikes at best
    other = Image.open(io.BytesIO(photo("giraffe"))).convert("RGB")
    unrelated = mixed.jpeg(other.transpose(Image.Transpose.FLIP_TOP_BOTTOM).crop((0, 0, 300, 200)))
    assert all(r[3] == "similar" for r in copies(conn, unrelated, 5) if not r[4]["name"].startswith("giraffe"))
    # item leaves the image, the feature and (as a bit string, not bytea) keeps the hash
    assert set(exact[0][4]) == {"id", "name", "phash"}


def looks(conn, image):
    """find_copies' rows and whether it answered from its first look (the full view and the
    hashes), from its DEBUG message."""
    notes = []
    conn.add_notice_handler(lambda d: notes.append(d.message_primary))
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = debug1")
        rows = copies(conn, image, 5)
    notes = [n for n in notes if n.startswith("find_copies:")]
    assert len(notes) == 1, notes
    return rows, "every view" not in notes[0]


def test_a_re_encoded_copy_is_answered_by_the_first_look(conn, gallery):
    """A re-encoded, recoloured or turned copy is found by the full view and the hashes (near),
    and the answer is the one every view gives: the original first, with its verdict."""
    conn.execute("DROP TABLE IF EXISTS gallery_nohash")
    conn.execute("CREATE TABLE gallery_nohash AS SELECT id, name, image, feature FROM gallery")
    for edit in ("jpeg q15", "grey", "downscale 1/3", "rotate 90"):
        query = mixed.edited("eagle", photo("eagle"), edit)
        rows, quick = looks(conn, query)
        assert quick, edit
        assert (rows[0][4]["name"], rows[0][3]) == ("eagle", "near"), edit
        # every view, without hashes: the same original first
        full = conn.execute("SELECT item->>'name' FROM pgvision.find_copies('gallery_nohash', %s, 1)",
                            [query]).fetchone()[0]
        assert full == "eagle"
    # a crop, a frame or a screenshot moves the hash: every view is looked with
    for edit in ("crop 80% centre", "screenshot", "border"):
        rows, quick = looks(conn, mixed.edited("eagle", photo("eagle"), edit))
        assert not quick, edit
        assert rows[0][4]["name"] == "eagle", edit
    conn.execute("DROP TABLE gallery_nohash")


def test_features_alone_without_a_hash_column(conn, gallery):
    conn.execute("DROP TABLE IF EXISTS nohash")
    conn.execute("CREATE TABLE nohash AS SELECT id, name, image, feature FROM gallery")
    query = mixed.edited("eagle", photo("eagle"), "rotate 90")
    rows = conn.execute("SELECT id, verdict FROM pgvision.find_copies('nohash', %s, 3)", [query]).fetchall()
    # no primary key: id is NULL, rows found by several views still come once
    assert len(rows) == 3 and all(r[0] is None for r in rows)
    assert all(r[1] in ("copy", "similar") for r in rows)
    with pytest.raises(psycopg.errors.UndefinedColumn) as e:
        conn.execute("SELECT * FROM pgvision.find_copies('nohash', %s, hash_column => 'phash')", [query])
    assert "GENERATED ALWAYS AS (pgvision.phash(image))" in e.value.diag.message_hint


def crop(name, box_fraction):
    """JPEG bytes of a part of a darknet photo: box_fraction (left, top, right, bottom) of it."""
    img = Image.open(io.BytesIO(photo(name))).convert("RGB")
    w, h = img.size
    l, t, r, b = box_fraction
    return mixed.jpeg(img.crop((int(l * w), int(t * h), int(r * w), int(b * h))))


def by_name(rows):
    return {r[4]["name"]: r for r in rows}


@pytest.mark.parametrize("name", ["dog", "eagle", "horses", "person"])
def test_matching_tells_a_crop_from_the_picture_it_lies_in(conn, gallery, name):
    # 70 % of the photo's left half: its features are close to the half, to the photo whole
    # and to the right half; matching finds it in the half, covering 49 % of it, and in the
    # whole, covering 24.5 %
    query = crop(name, (0.05, 0.2, 0.4, 0.9))
    rows = copies(conn, query, 5)
    assert rows[0][4]["name"] == f"{name}-left", [(r[4]["name"], round(r[2], 3), r[3]) for r in rows]
    plain = by_name(copies(conn, query, 5, matched=0))
    found = by_name(rows)
    gain = {n: found[n][2] - plain[n][2] for n in found if n in plain}
    assert gain[f"{name}-left"] > 0.02, gain
    assert all(g < 0.6 * gain[f"{name}-left"] for n, g in gain.items() if n != f"{name}-left"), gain


def test_matching_keeps_going_past_an_image_that_does_not_decode(conn, gallery):
    conn.execute("DROP TABLE IF EXISTS gallery_broken")
    conn.execute("CREATE TABLE gallery_broken AS SELECT id, name, image, feature, phash FROM gallery")
    conn.execute("ALTER TABLE gallery_broken ADD PRIMARY KEY (id)")
    conn.execute("UPDATE gallery_broken SET image = 'not an image' WHERE name = 'dog'")
    conn.execute("UPDATE gallery_broken SET image = NULL WHERE name = 'dog-right'")
    query = crop("dog", (0.05, 0.2, 0.4, 0.9))
    rows = conn.execute("SELECT id, score, item->>'name' FROM pgvision.find_copies('gallery_broken', %s, 5)",
                        [query]).fetchall()
    assert rows[0][2] == "dog-left"
    assert {"dog", "dog-right"} <= {r[2] for r in rows}  # found by their features, not matched
    conn.execute("DROP TABLE gallery_broken")


def test_matching_needs_the_image_column(conn, gallery, admin):
    query = crop("dog", (0.05, 0.2, 0.4, 0.9))
    with pytest.raises(psycopg.errors.DatatypeMismatch):
        copies(conn, query, image_column="name")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        copies(conn, query, image_column="picture")
    # a role that may read every column but the images gets the features' answer
    admin.execute("DROP ROLE IF EXISTS copies_columns")
    admin.execute("CREATE ROLE copies_columns")
    try:
        admin.execute("GRANT copies_columns TO app")
        admin.execute("GRANT SELECT (id, name, feature, phash) ON gallery TO copies_columns")
        unmatched = copies(conn, query, 5, matched=0)
        with conn.transaction():
            conn.execute("SET LOCAL ROLE copies_columns")
            got = copies(conn, query, 5)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                copies(conn, query, 5, image_column="image")
        assert [(r[1], round(r[2], 6)) for r in got] == [(r[1], round(r[2], 6)) for r in unmatched]
    finally:
        admin.execute("DROP OWNED BY copies_columns")
        admin.execute("DROP ROLE copies_columns")


def test_bad_arguments(conn, gallery):
    dog = photo("dog")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        copies(conn, dog, 0)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        copies(conn, dog, 10, candidates=5)
    for matched in (-1, 101):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            copies(conn, dog, matched=matched)
    with pytest.raises(psycopg.errors.DatatypeMismatch):
        copies(conn, dog, hash_column="name")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        copies(conn, dog, feature_column="nope")
    with pytest.raises(psycopg.errors.InvalidBinaryRepresentation):
        copies(conn, b"not an image")
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        conn.execute("SELECT * FROM pgvision.find_copies(NULL, %s)", [dog])
    assert copies(conn, None) == []


def test_the_caller_needs_select_on_the_table(conn, gallery, admin):
    admin.execute("DROP ROLE IF EXISTS copies_reader")
    admin.execute("CREATE ROLE copies_reader")
    try:
        admin.execute("GRANT copies_reader TO app")
        with conn.transaction():
            conn.execute("SET LOCAL ROLE copies_reader")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                copies(conn, photo("dog"))
    finally:
        admin.execute("DROP OWNED BY copies_reader")
        admin.execute("DROP ROLE copies_reader")


def test_the_session_keeps_its_ef_search(conn, gallery):
    with conn.transaction():
        conn.execute("SET LOCAL hnsw.ef_search = 60")
        copies(conn, photo("dog"))
        assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "60"
