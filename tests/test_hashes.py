"""pgvision.phash and pgvision.dhash: bit for bit imagehash's, in SQL as an ordinary role.

imagehash (requirements-dev.txt) computes the DCT with scipy; the runtime has numpy only
(python_udf/pgvision_runtime/hashes.py). Both hash the image images.decode returns.
"""

import io
import itertools
import os
import statistics
import time

import imagehash
import numpy as np
import psycopg
import pytest
import scipy.fftpack
from PIL import Image, ImageOps

from data import PHOTOS, encode, fashion_sample, photo
from pgvision_runtime import hashes, images

DOG = photo("dog")


def _exif_rotated():
    """A photo stored turned a quarter, with EXIF orientation 6 to show it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    img = images.decode(photo("giraffe")).transpose(Image.Transpose.ROTATE_90)
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def _alpha_png():
    img = images.decode(photo("horses")).convert("RGBA")
    alpha = Image.linear_gradient("L").resize(img.size)
    img.putalpha(alpha)
    return encode(img, "PNG")


def _palette_gif():
    return encode(images.decode(photo("kite")).quantize(64), "GIF")


def _palette_gif_transparent():
    img = Image.new("P", (64, 64), 0)
    img.putpalette([255, 0, 0, 0, 0, 255, 0, 200, 0] + [0] * 759)
    img.paste(1, (32, 0, 64, 64))
    img.paste(2, (8, 40, 30, 60))
    return encode(img, "GIF", transparency=0)


def _sixteen_bit_grey():
    wide = Image.linear_gradient("L").rotate(30).convert("I").point(lambda v: v * 256)
    return encode(wide.convert("I;16"), "PNG")


def cases():
    """(name, image bytes): every image the parity tests hash."""
    out = [(f"photo-{n}", photo(n)) for n in PHOTOS]
    out += [(f"fashion-{i}-{label}", png) for i, label, png in fashion_sample(5)]
    out += [
        ("alpha-png", _alpha_png()),
        ("grey-png", encode(images.decode(photo("person")).convert("L"), "PNG")),
        ("grey-16-bit-png", _sixteen_bit_grey()),
        ("1x1", encode(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG")),
        ("1x1-black", encode(Image.new("L", (1, 1), 0), "PNG")),
        ("flat-colour", encode(Image.new("RGB", (64, 48), (40, 120, 200)), "PNG")),
        ("flat-black", encode(Image.new("RGB", (64, 48), (0, 0, 0)), "PNG")),
        ("flat-white-jpeg", encode(Image.new("RGB", (300, 200), (255, 255, 255)), "JPEG")),
        ("gradient", encode(Image.linear_gradient("L").resize((200, 100)), "PNG")),
        ("mirror-symmetric", _mirrored("eagle")),
        ("exif-rotated-jpeg", _exif_rotated()),
        ("palette-gif", _palette_gif()),
        ("palette-gif-transparent", _palette_gif_transparent()),
        ("webp", encode(images.decode(photo("scream")), "WEBP", quality=80)),
        ("tall-narrow", encode(images.decode(photo("dog")).resize((7, 300)), "PNG")),
    ]
    out += [(f"{n}-jpeg-q15", encode(images.decode(photo(n)), "JPEG", quality=15)) for n in PHOTOS]
    return out


def _mirrored(name):
    img = images.decode(photo(name))
    w, h = img.size
    out = Image.new("RGB", (2 * w, h))
    out.paste(img, (0, 0))
    out.paste(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (w, 0))
    return encode(out, "PNG")


CASES = cases()
IDS = [c[0] for c in CASES]


def scipy_lowfreq(img):
    """imagehash.phash's coefficients, as it computes them."""
    pixels = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS))
    return scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:8, :8]


# --- the runtime against imagehash --------------------------------------------------------

def test_the_cases():
    assert len(CASES) == 7 + 50 + 15 + 7


@pytest.mark.parametrize("name,data", CASES, ids=IDS)
def test_phash_is_imagehash(name, data):
    img = images.decode(data)
    assert hashes.to_hex(hashes.phash(data)) == str(imagehash.phash(img))
    # the Pillow image itself gives the same bits as its bytes
    assert hashes.phash(img) == hashes.phash(data)


@pytest.mark.parametrize("name,data", CASES, ids=IDS)
def test_dhash_is_imagehash(name, data):
    img = images.decode(data)
    assert hashes.to_hex(hashes.dhash(data)) == str(imagehash.dhash(img))
    assert hashes.dhash(img) == hashes.dhash(data)


@pytest.mark.parametrize("name,data", CASES, ids=IDS)
def test_the_dct_is_scipys(name, data):
    """The cosine-matrix DCT gives scipy's coefficients within rounding, and every real
    margin to the median is far wider than hashes.TIE."""
    img = images.decode(data)
    ref = scipy_lowfreq(img)
    pixels = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    ours = hashes.lowfreq(pixels)
    assert np.abs(ours - ref).max() < 1e-8  # 8e-11 at most here
    margins = np.abs(ref - np.median(ref))
    # exact ties (scipy gives exact zeros for them here) or margins of 1.45 or more
    assert ((margins == 0) | (margins > 1.4)).all(), np.sort(margins.ravel())[:4]


def test_smallest_margin_of_the_photos():
    lows = [scipy_lowfreq(images.decode(photo(n))) for n in PHOTOS]
    smallest = min(np.abs(low - np.median(low)).min() for low in lows)
    assert 4 < smallest < 5  # 4.39 (eagle); 1.45 with Fashion-MNIST, quoted in hashes.py


def test_bits_of_known_images():
    """What the hashes are, in imagehash's hex, for the record."""
    assert hashes.to_hex(hashes.phash(DOG)) == "b401c37e63cb49ab"
    assert hashes.to_hex(hashes.dhash(DOG)) == "c89cae9e3c243438"
    # a flat image: every AC coefficient is 0, so only the DC one is above the median
    flat = encode(Image.new("RGB", (10, 10), (90, 90, 90)), "PNG")
    assert hashes.to_hex(hashes.phash(flat)) == "8000000000000000"
    assert hashes.to_hex(hashes.dhash(flat)) == "0000000000000000"
    black = encode(Image.new("L", (10, 10), 0), "PNG")
    assert hashes.phash(black) == "0" * 64


def test_orientation_and_transparency_are_decodes():
    """The EXIF-rotated JPEG hashes as the upright picture Pillow's exif_transpose shows;
    the PNG with alpha as the picture composited on white."""
    data = _exif_rotated()
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert shown.size == images.decode(photo("giraffe")).size
    assert hashes.to_hex(hashes.phash(data)) == str(imagehash.phash(shown))
    assert hashes.to_hex(hashes.dhash(data)) == str(imagehash.dhash(shown))
    stored = Image.open(io.BytesIO(data))
    assert hashes.hamming(hashes.phash(data), hashes.phash(stored)) > 16
    rgba = Image.open(io.BytesIO(_alpha_png()))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    assert hashes.phash(_alpha_png()) == hashes.phash(white.convert("RGB"))


def test_an_exact_tie_at_the_median_is_not_above_it():
    """Where imagehash's bits come from rounding noise, ours are exact.

    A 32x32 grey image symmetric about its diagonal has DCT coefficients in equal pairs
    (c[i, j] == c[j, i]). When such a pair holds the median, neither is above it in exact
    arithmetic; scipy's rounding usually leaves one a hair (1e-13) above, and imagehash sets
    that bit. No other DCT rounds the same way: this is the one place without parity.
    """
    rng = np.random.default_rng(7)
    differ = 0
    for _ in range(40):
        a = rng.integers(0, 256, (32, 32)).astype(np.uint8)
        a = np.maximum(a, a.T)
        img = Image.fromarray(a, "L")
        ref = scipy_lowfreq(img)
        middle = np.sort(ref.ravel())[31:33]
        ours = hashes.phash(img)
        theirs = format(int(str(imagehash.phash(img)), 16), "064b")
        decided = np.abs(ref - np.median(ref)).ravel() > hashes.TIE
        # wherever the margin is real, the same bits
        assert all(o == t for o, t, d in zip(ours, theirs, decided) if d)
        # at an exact tie, the exact answer: not above the median
        assert all(o == "0" for o, d in zip(ours, decided) if not d)
        if abs(middle[1] - middle[0]) <= hashes.TIE:
            differ += ours != theirs
    assert differ > 0  # the case exists: imagehash's noise set a tied bit


def test_near_duplicates_are_near_and_different_photos_far():
    """JPEG quality 15 and half size: 0 to 2 bits away; two different photos: 23 or more."""
    for n in PHOTOS:
        img = images.decode(photo(n))
        q15 = encode(img, "JPEG", quality=15)
        half = encode(img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS),
                      "JPEG", quality=85)
        for fn in (hashes.phash, hashes.dhash):
            assert hashes.hamming(fn(photo(n)), fn(q15)) <= 2, (n, fn.__name__)
            assert hashes.hamming(fn(photo(n)), fn(half)) <= 2, (n, fn.__name__)
    for fn, least in ((hashes.phash, 24), (hashes.dhash, 23)):
        distances = [hashes.hamming(fn(photo(a)), fn(photo(b)))
                     for a, b in itertools.combinations(PHOTOS, 2)]
        assert min(distances) == least, (fn.__name__, sorted(distances))


def test_a_large_photo_at_the_pixel_limit():
    """24 megapixels, with pgvision.max_pixels just enough: the grey copy and the resize
    fit in decode's memory bound, and the bits are still imagehash's (no reduced decode)."""
    big = encode(images.decode(DOG).resize((6000, 4000)), "JPEG", quality=90)
    bits = hashes.phash(big, max_pixels=6000 * 4000)
    assert hashes.to_hex(bits) == str(imagehash.phash(images.decode(big)))
    assert hashes.dhash(big, max_pixels=6000 * 4000) == hashes.dhash(big)
    assert hashes.hamming(bits, hashes.phash(DOG)) <= 2


def test_limits_and_errors_are_decodes():
    with pytest.raises(images.LimitError):
        hashes.phash(DOG, max_pixels=10_000)
    with pytest.raises(images.LimitError):
        hashes.dhash(DOG, max_bytes=1000)
    with pytest.raises(images.ImageError):
        hashes.phash(b"not an image")


# --- in SQL ---------------------------------------------------------------------------------

def sql_hash(conn, fn, data):
    return conn.execute(f"SELECT pgvision.{fn}(%s)", [data]).fetchone()[0]


def test_sql_equals_the_runtime(conn):
    for name, data in CASES[:7] + CASES[57:]:
        assert sql_hash(conn, "phash", data) == hashes.phash(data), name
        assert sql_hash(conn, "dhash", data) == hashes.dhash(data), name


def test_sql_type_and_hex(conn):
    row = conn.execute(
        "SELECT pg_typeof(h)::text, length(h), lpad(to_hex(h::bigint), 16, '0'), "
        "lpad(to_hex(pgvision.dhash(%s)::bigint), 16, '0') FROM pgvision.phash(%s) AS h",
        [DOG, DOG]).fetchone()
    assert row == ("bit", 64, str(imagehash.phash(images.decode(DOG))),
                   str(imagehash.dhash(images.decode(DOG))))


def test_sql_declarations(conn):
    rows = conn.execute(
        "SELECT p.proname, p.provolatile, p.proisstrict, p.proparallel, p.proconfig, "
        "pg_catalog.format_type(p.prorettype, NULL), l.lanname, "
        "pg_catalog.obj_description(p.oid, 'pg_proc'), "
        "pg_catalog.has_function_privilege('app', p.oid, 'EXECUTE') "
        "FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang "
        "WHERE p.pronamespace = 'pgvision'::regnamespace AND p.proname IN ('phash', 'dhash') "
        "ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == ["dhash", "phash"]
    for name, volatile, strict, parallel, config, rettype, lang, comment, may in rows:
        assert (volatile, strict, parallel, rettype, lang, may) == ("i", True, "u", "bit", "plpython3u", True)
        assert config == ["search_path=pg_catalog, pg_temp"]
        assert "imagehash" in comment and "bit_hamming_ops" in comment and "<~>" in comment


def test_null_in_null_out(conn):
    assert conn.execute("SELECT pgvision.phash(NULL), pgvision.dhash(NULL)").fetchone() == (None, None)


BAD = [
    ("empty bytes", [], b"", "22P03", "image is empty"),
    ("random bytes", [], os.urandom(4096), "22P03", "not recognized"),
    ("truncated jpeg", [], DOG[: len(DOG) // 2], "22P03", "could not decode"),
    ("text", [], b"hello, world", "22P03", "not recognized"),
    ("over pixel limit", ["SET pgvision.max_pixels = 10000"], DOG, "54000",
     "larger than pgvision.max_pixels (10000)"),
    ("over byte limit", ["SET pgvision.max_image_bytes = 1000"], DOG, "54000",
     "larger than pgvision.max_image_bytes (1000)"),
]


@pytest.mark.parametrize("fn", ["phash", "dhash"])
@pytest.mark.parametrize("case,sets,data,sqlstate,words", BAD, ids=[c[0] for c in BAD])
def test_bad_input(conn, fn, case, sets, data, sqlstate, words):
    for statement in sets:
        conn.execute(statement)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(f"SELECT pgvision.{fn}(%s::bytea)", [data])
    error = info.value
    assert error.sqlstate == sqlstate, (error.sqlstate, str(error))
    message = error.diag.message_primary
    assert words in message and message.startswith("pgvision: "), message
    assert not message.endswith(".") and "Traceback" not in message
    for statement in sets:
        conn.execute("RESET " + statement.split()[1])
    assert len(sql_hash(conn, fn, DOG)) == 64


def test_same_errors_as_embed(conn):
    for data in (b"", os.urandom(512), DOG[:1000]):
        got = []
        for fn in ("pgvision.embed", "pgvision.phash", "pgvision.dhash"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"SELECT {fn}(%s::bytea)", [data])
            got.append((info.value.sqlstate, info.value.diag.message_primary))
        assert got[0] == got[1] == got[2]


@pytest.fixture
def hashed(conn):
    """A table of 50 Fashion-MNIST images and the 7 photos with their phash stored."""
    conn.execute("DROP TABLE IF EXISTS hashed")
    conn.execute("CREATE TABLE hashed (id int PRIMARY KEY, name text, image bytea NOT NULL, h bit(64))")
    rows = [(i, name, data) for i, (name, data) in enumerate(CASES[:57])]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO hashed (id, name, image) VALUES (%s, %s, %s)", rows)
    conn.execute("UPDATE hashed SET h = pgvision.phash(image)")
    yield conn
    conn.execute("DROP TABLE hashed")


def plan(conn, sql, params):
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params).fetchall())


def test_hnsw_index_on_a_stored_column(hashed):
    conn = hashed
    conn.execute("CREATE INDEX hashed_h ON hashed USING hnsw (h bit_hamming_ops)")
    conn.execute("ANALYZE hashed")
    query = encode(images.decode(photo("horses")), "JPEG", quality=15)
    sql = ("SELECT name, h <~> q AS d FROM hashed, pgvision.phash(%s::bytea) AS q "
           "ORDER BY h <~> q LIMIT 3")
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        assert "Index Scan using hashed_h" in plan(conn, sql, [query])
        rows = conn.execute(sql, [query]).fetchall()
    assert rows[0] == ("photo-horses", 0.0) and rows[1][1] >= 16
    # pgvector's hamming_distance is the same number as <~>
    d = conn.execute("SELECT hamming_distance(h, pgvision.phash(%s)) FROM hashed WHERE name = 'photo-dog'",
                     [query]).fetchone()[0]
    assert d == hashes.hamming(hashes.phash(DOG), hashes.phash(query))


def test_hnsw_index_on_the_expression(hashed):
    """The function's result type has no length: the index and the query cast to bit(64)."""
    conn = hashed
    with pytest.raises(psycopg.Error) as info:
        conn.execute("CREATE INDEX ON hashed USING hnsw ((pgvision.phash(image)) bit_hamming_ops)")
    assert "dimensions" in str(info.value)
    conn.execute("CREATE INDEX hashed_phash ON hashed USING hnsw "
                 "((pgvision.phash(image)::bit(64)) bit_hamming_ops)")
    conn.execute("ANALYZE hashed")
    sql = ("SELECT name FROM hashed ORDER BY pgvision.phash(image)::bit(64) <~> pgvision.phash(%s::bytea) "
           "LIMIT 2")
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        assert "Index Scan using hashed_phash" in plan(conn, sql, [DOG])
        assert conn.execute(sql, [DOG]).fetchone() == ("photo-dog",)


def test_timing(conn, capsys):
    """Not a test of speed: prints the median time of phash, dhash and embed of a photo,
    and of a 24-megapixel JPEG, which phash decodes at full size (embed at a reduced scale)."""
    big = encode(images.decode(DOG).resize((6000, 4000)), "JPEG", quality=90)

    def median(sql, data, n):
        conn.execute(sql, [data])
        times = []
        for _ in range(n):
            start = time.perf_counter()
            conn.execute(sql, [data]).fetchone()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000
    lines = []
    for label, data, n in (("dog.jpg (768x576)", DOG, 15), ("6000x4000 JPEG", big, 3)):
        got = {fn: median(f"SELECT {fn}(%s) IS NULL", data, n) for fn in
               ("pgvision.phash", "pgvision.dhash", "pgvision.embed")}
        lines.append(f"median ms on {label}: " + ", ".join(f"{k} {v:.1f}" for k, v in got.items()))
    with capsys.disabled():
        print("\n" + "\n".join(lines))
