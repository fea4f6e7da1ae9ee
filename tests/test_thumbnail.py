"""pgvision.thumbnail and pgvision.data_url, as an ordinary role."""

import base64
import io
import os

import psycopg
import pytest
from PIL import Image, ImageOps

from data import PHOTOS, encode, photo

DOG = photo("dog")


def picture(data):
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def thumb(conn, image, *args):
    params = ", ".join(["%s"] * (1 + len(args)))
    return conn.execute(f"SELECT pgvision.thumbnail({params})", [image, *args]).fetchone()[0]


@pytest.mark.parametrize("name", PHOTOS)
def test_longest_side_is_size_and_aspect_is_kept(conn, name):
    original = ImageOps.exif_transpose(picture(photo(name)))
    out = picture(thumb(conn, photo(name)))
    assert out.format == "JPEG" and out.mode in ("RGB", "L")
    assert max(out.size) == 128
    w, h = original.size
    expected = (128, max(1, round(h * 128 / w))) if w >= h else (max(1, round(w * 128 / h)), 128)
    assert out.size == expected


@pytest.mark.parametrize("size", [1, 64, 500, 1024])
def test_sizes(conn, size):
    out = picture(thumb(conn, DOG, size))
    assert max(out.size) == size


def test_a_thumbnail_looks_like_its_image(conn):
    """The picture itself, not just its size: close to Pillow's own thumbnail of the photo."""
    import numpy as np

    out = np.asarray(picture(thumb(conn, DOG, 128)).convert("RGB"), dtype=np.float64)
    ref = picture(DOG).convert("RGB")
    ref.thumbnail((128, 128), Image.Resampling.LANCZOS)
    ref = np.asarray(ref.resize(out.shape[1::-1]), dtype=np.float64)
    assert np.abs(out - ref).mean() < 6


def test_formats(conn):
    for fmt, name in (("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("JPG", "JPEG"), ("PNG", "PNG")):
        assert picture(thumb(conn, DOG, 64, fmt)).format == name, fmt


def test_same_bytes_every_time(conn):
    assert thumb(conn, DOG) == thumb(conn, DOG)


def test_exif_orientation_applied(conn):
    # a landscape picture, red on the left, stored with orientation 6 (shown turned 90
    # degrees clockwise): the thumbnail is portrait, red on top
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    out = picture(thumb(conn, data, 100, "png")).convert("RGB")
    assert out.size == (50, 100)
    assert out.getpixel((25, 10))[0] > 200 and out.getpixel((25, 90))[2] > 200
    assert "exif" not in out.info  # no orientation left for a viewer to apply again


def rgba_png():
    img = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    img.paste((0, 128, 0, 255), (100, 0, 200, 100))
    return encode(img, "PNG")


def test_alpha_on_white_for_jpeg(conn):
    out = picture(thumb(conn, rgba_png(), 100, "jpeg")).convert("RGB")
    assert all(c > 245 for c in out.getpixel((10, 25)))
    r, g, b = out.getpixel((90, 25))
    assert g > 100 and r < 30 and b < 30


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_alpha_kept_for_png_and_webp(conn, fmt):
    out = picture(thumb(conn, rgba_png(), 100, fmt))
    assert out.mode == "RGBA"
    assert out.getpixel((10, 25))[3] == 0
    assert out.getpixel((90, 25))[3] == 255


def test_palette_transparency_kept_for_png(conn):
    img = Image.new("P", (64, 64), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (32, 0, 64, 64))
    data = encode(img, "GIF", transparency=0)
    out = picture(thumb(conn, data, 64, "png"))
    assert out.mode == "RGBA" and out.getpixel((5, 5))[3] == 0 and out.getpixel((60, 5))[3] == 255
    flat = picture(thumb(conn, data, 64, "jpeg")).convert("RGB")
    assert all(c > 245 for c in flat.getpixel((5, 5)))


def test_grey_images(conn):
    img = Image.linear_gradient("L").resize((300, 150))
    for fmt in ("jpeg", "png", "webp"):
        out = picture(thumb(conn, encode(img, "PNG"), 120, fmt))
        assert out.size == (120, 60)
    # 16-bit grey, as a scanner may store it
    wide = Image.linear_gradient("L").convert("I").point(lambda v: v * 256).convert("I;16")
    assert picture(thumb(conn, encode(wide, "PNG"), 32)).size == (32, 32)


def test_data_url(conn):
    url, raw = conn.execute("SELECT pgvision.data_url(%s), pgvision.thumbnail(%s)", [DOG, DOG]).fetchone()
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix) and "\n" not in url
    assert base64.b64decode(url[len(prefix):]) == raw
    assert len(url) < 20_000  # a table cell, not the 500 kB of the photo itself
    png = conn.execute("SELECT pgvision.data_url(%s, 32, 'png')", [DOG]).fetchone()[0]
    assert png.startswith("data:image/png;base64,")
    assert max(picture(base64.b64decode(png.split(",", 1)[1])).size) == 32


def test_null_in_null_out(conn):
    row = conn.execute("SELECT pgvision.thumbnail(NULL), pgvision.thumbnail(%s, NULL), "
                       "pgvision.data_url(NULL), pgvision.data_url(%s, NULL)", [DOG, DOG]).fetchone()
    assert row == (None, None, None, None)


# (case, SET statements, SQL, parameters, SQLSTATE, words in the message)
CASES = [
    ("size 0", [], "SELECT pgvision.thumbnail(%s, 0)", [DOG], "22023", "between 1 and 1024, not 0"),
    ("size 1025", [], "SELECT pgvision.thumbnail(%s, 1025)", [DOG], "22023", "between 1 and 1024, not 1025"),
    ("negative size", [], "SELECT pgvision.data_url(%s, -5)", [DOG], "22023", "not -5"),
    ("unknown format", [], "SELECT pgvision.thumbnail(%s, 64, 'gif')", [DOG], "22023",
     'unknown thumbnail format "gif"'),
    ("data_url format", [], "SELECT pgvision.data_url(%s, 64, 'bmp')", [DOG], "22023", "unknown thumbnail format"),
    ("empty bytes", [], "SELECT pgvision.thumbnail(''::bytea)", [], "22P03", "image is empty"),
    ("random bytes", [], "SELECT pgvision.thumbnail(%s)", [os.urandom(4096)], "22P03", "not recognized"),
    ("truncated jpeg", [], "SELECT pgvision.thumbnail(%s)", [DOG[: len(DOG) // 2]], "22P03", "could not decode"),
    ("text", [], "SELECT pgvision.data_url(convert_to('hello', 'UTF8'))", [], "22P03", "not recognized"),
    ("over pixel limit", ["SET pgvision.max_pixels = 10000"], "SELECT pgvision.thumbnail(%s)", [DOG],
     "54000", "larger than pgvision.max_pixels (10000)"),
    ("over byte limit", ["SET pgvision.max_image_bytes = 1000"], "SELECT pgvision.data_url(%s)", [DOG],
     "54000", "larger than pgvision.max_image_bytes (1000)"),
]


@pytest.mark.parametrize("case,sets,sql,params,sqlstate,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(conn, case, sets, sql, params, sqlstate, words):
    for statement in sets:
        conn.execute(statement)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    error = info.value
    assert error.sqlstate == sqlstate, (error.sqlstate, str(error))
    message = error.diag.message_primary
    assert words in message, message
    assert not message.endswith(".") and "Traceback" not in message
    for statement in sets:
        conn.execute("RESET " + statement.split()[1])
    assert max(picture(thumb(conn, DOG, 16)).size) == 16


def test_same_errors_as_embed(conn):
    """One decoder: whatever embed refuses, thumbnail refuses with the same SQLSTATE and message."""
    for data in (b"", os.urandom(512), DOG[:1000]):
        got = []
        for fn in ("pgvision.embed", "pgvision.thumbnail"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"SELECT {fn}(%s::bytea)", [data])
            got.append((info.value.sqlstate, info.value.diag.message_primary))
        assert got[0] == got[1]


def test_large_jpeg_within_the_pixel_budget(conn):
    """A 24-megapixel photo: the decode reduces it (JPEG draft), and the result is right."""
    big = picture(DOG).resize((6000, 4000))
    data = encode(big, "JPEG", quality=90)
    out = picture(thumb(conn, data, 256))
    assert out.size == (256, 171)


def test_psql_lo_import_route(psql, conn, tmp_path):
    """The README's route for a role without pg_read_binary_file: \\lo_import on the client,
    lo_get in SQL, \\lo_unlink after."""
    from data import DARKNET

    conn.execute("DROP TABLE IF EXISTS lo_images")
    conn.execute("CREATE TABLE lo_images (id int PRIMARY KEY, class text, image bytea NOT NULL,"
                 " feature vector(1280))")
    script = tmp_path / "lo.sql"
    script.write_text(f"\\lo_import {DARKNET / 'eagle.jpg'}\n"
                      "\\set img :LASTOID\n"
                      "INSERT INTO lo_images VALUES (2, 'bird', lo_get(:img), NULL);\n"
                      "\\lo_unlink :img\n"
                      "UPDATE lo_images SET feature = pgvision.embed(image) WHERE feature IS NULL;\n")
    script.chmod(0o644)
    tmp_path.chmod(0o755)
    run = psql(script, check=False)
    assert run.returncode == 0, run.stderr
    image, has_feature = conn.execute("SELECT image, feature IS NOT NULL FROM lo_images").fetchone()
    assert image == photo("eagle") and has_feature
    assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner = "
                        "(SELECT oid FROM pg_roles WHERE rolname = current_user)").fetchone()[0] == 0
