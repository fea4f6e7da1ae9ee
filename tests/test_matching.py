"""Keypoint matching (python_udf/pgvision_runtime/matching.py): how surely and how much of a
stored image a query shows, find_copies' check of its best rows."""

import io

import psycopg
import pytest
from PIL import Image

from data import photo
from pgvision_runtime import matching

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
