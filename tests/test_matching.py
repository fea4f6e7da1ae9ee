"""Keypoint matching (python_udf/pgvision_runtime/matching.py): how surely and how much of a
stored image a query shows, find_copies' check of its best rows."""

import io

import psycopg
import pytest
from PIL import Image, ImageDraw

from data import photo
from pgvision_runtime import copies, matching

LIMITS = {"max_pixels": 50_000_000, "max_bytes": 64 << 20}


def jpeg(img, quality=90):
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def part(name, box):
    img = Image.open(io.BytesIO(photo(name))).convert("RGB")
    w, h = img.size
    return img.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))


def test_a_crop_covers_its_original_more_than_the_picture_around_it():
    whole = Image.open(io.BytesIO(photo("horses"))).convert("RGB")
    left = part("horses", (0, 0, 0.5, 1))
    query = jpeg(part("horses", (0.05, 0.15, 0.4, 0.85)), 60)
    s_left, s_whole, s_right = matching.strengths(
        query, [jpeg(left), jpeg(whole), jpeg(part("horses", (0.5, 0, 1, 1)))], LIMITS)
    # the query is 70 % x 70 % of the left half: about half of it, a quarter of the whole
    assert 0.25 < s_left <= 0.75, (s_left, s_whole)
    assert 0.05 < s_whole < 0.6 * s_left
    assert s_right < 0.05


@pytest.mark.parametrize("turn", [10, 90])
def test_a_turned_copy_matches(turn):
    img = Image.open(io.BytesIO(photo("dog"))).convert("RGB")
    query = jpeg(img.rotate(turn, Image.Resampling.BICUBIC, expand=True))
    s_dog, s_other = matching.strengths(query, [photo("dog"), photo("eagle")], LIMITS)
    # the turned frame's corners are keypoints of the query alone
    assert s_dog > 0.5 and s_other < 0.05, (s_dog, s_other)


def test_a_picture_inside_a_screenshot_matches():
    pic = part("eagle", (0, 0, 1, 1))
    pic.thumbnail((300, 300))
    screen = Image.new("RGB", (800, 600), (236, 236, 236))
    screen.paste(pic, (300, 120))
    query = io.BytesIO()
    screen.save(query, "PNG")
    s_eagle, s_dog = matching.strengths(query.getvalue(), [photo("eagle"), photo("dog")], LIMITS)
    assert s_eagle > 0.5 and s_dog < 0.05, (s_eagle, s_dog)


def test_flat_images_and_bad_stored_images_give_no_match():
    flat = jpeg(Image.new("RGB", (400, 300), (120, 130, 140)))
    got = matching.strengths(photo("dog"), [flat, None, b"not an image", photo("dog")], LIMITS)
    # matched with itself, an image spans all of its own keypoints
    assert got[0] == 0.0 and got[1] is None and got[2] is None and got[3] > 0.95
    assert matching.strengths(flat, [photo("dog")], LIMITS) == [0.0]


def test_the_limits_apply_to_stored_images():
    big = jpeg(Image.new("RGB", (3000, 2000), (10, 20, 30)))
    assert matching.strengths(photo("dog"), [big], {"max_pixels": 1_000_000, "max_bytes": 0}) == [None]


def test_one_call_matches_at_most_100_images(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT pgvision._copy_match(%s, array_fill(%s::bytea, ARRAY[101]))",
                     [photo("dog"), photo("dog")])
    got = conn.execute("SELECT pgvision._copy_match(%s, ARRAY[%s, NULL]::bytea[])",
                       [photo("dog"), photo("dog")]).fetchone()[0]
    assert got[0] > 0.95 and got[1] is None


def _screen(picture, at):
    """An 800x600 window with a title bar, a side panel, lines of text, ``picture`` at ``at``."""
    canvas = Image.new("RGB", (800, 600), (236, 236, 236))
    d = ImageDraw.Draw(canvas)
    d.rectangle((0, 0, 800, 32), fill=(52, 58, 64))
    d.rectangle((0, 32, 180, 600), fill=(248, 248, 250))
    for y in range(60, 560, 28):
        d.rectangle((20, y, 120, y + 10), fill=(120, 120, 130))
    canvas.paste(picture, at)
    for y in range(at[1] + picture.height + 16, 590, 24):
        d.rectangle((at[0], y, at[0] + 200, y + 9), fill=(90, 90, 96))
    return canvas


@pytest.mark.parametrize("kind", ["photo", "flat"])
def test_the_content_view_cuts_the_picture_out_of_a_screenshot(kind):
    if kind == "photo":
        picture = Image.open(io.BytesIO(photo("dog"))).convert("RGB")
        picture.thumbnail((300, 300))
    else:
        # flat colours, as in a drawing or a logo: no texture to tell it from the screen by
        picture = Image.new("RGB", (300, 200), (30, 90, 200))
        ImageDraw.Draw(picture).ellipse((40, 30, 200, 170), fill=(250, 200, 40))
    shot = Image.open(io.BytesIO(jpeg(_screen(picture, (260, 80)), 92))).convert("RGB")
    cut = copies.content(shot)
    assert cut is not None
    # within a few pixels of the pasted picture (JPEG rings at its edge)
    assert abs(cut.width - picture.width) <= 6 and abs(cut.height - picture.height) <= 6, cut.size


@pytest.mark.parametrize("name", ["dog", "eagle", "giraffe"])
def test_a_photo_alone_has_no_content_view(name):
    assert copies.content(Image.open(io.BytesIO(photo(name))).convert("RGB")) is None


def _drawing(seed):
    """Flat shapes on a flat ground, as in a poster or a logo: few corners for keypoints."""
    import random
    rng = random.Random(seed)
    img = Image.new("RGB", (480, 360), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x, y, r = rng.randrange(480), rng.randrange(360), rng.randrange(30, 120)
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def test_a_crop_of_a_flat_drawing_is_found_by_its_pixels():
    drawing, other = _drawing(1), _drawing(2)
    query = jpeg(drawing.crop((100, 60, 436, 312)), 80)  # 70 % by side, off-centre
    decoded = Image.open(io.BytesIO(query))
    assert matching.strength(matching._keypoints(decoded), matching._keypoints(drawing)) < 0.1
    s_drawing, s_other, s_mirrored = matching.strengths(
        query, [jpeg(drawing), jpeg(other), jpeg(drawing.transpose(Image.Transpose.FLIP_LEFT_RIGHT))], LIMITS)
    assert 0.4 < s_drawing <= 0.6, s_drawing  # it covers 49 % of the drawing
    assert s_other < 0.05 and s_mirrored < 0.05, (s_other, s_mirrored)
