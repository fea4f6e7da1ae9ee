"""Whether a query image shows a part of a stored one: find_copies' check of its best rows.

A feature of the whole image cannot tell a crop of a picture from the picture's other
tiles, nor a picture inside a screenshot from a picture like it: both are close in feature
space. Keypoints can: the query's ORB keypoints are matched to the stored image's, and a
RANSAC homography keeps the matches that agree on one perspective transform (a crop, a
rescale, a turn, a tilt, a picture pasted into a screen). The strength of a match is the
share of the stored image's keypoints' extent (their convex hull: an image matched with
itself spans all of it) that the agreeing keypoints span, times the share of the query's
they span, times how many agree (full at FULL_MATCHES): the original of a crop contains all
of the crop, and the crop covers more of it than of the larger picture it also lies in; the
crop's look-alikes have matches that do not agree on one geometry.

Images are decoded by images.decode (Pillow, within the server's limits), so OpenCV's own
decoders never read stored or query bytes: it is given pixels. They are matched grey, at
most SIDE pixels, their histogram equalised (smooth wallpapers and gradients give ORB few
corners at their own contrast). The query is matched as it is and, where it has one, as
its textured region (copies.content: a picture inside a screenshot is small on the
screen). The settings were chosen on bench/mixed.py's collection (40 to 47 originals, 4 to
7 edits, each query against the original, its sibling tiles, the wallpaper whole and 5
other originals: the original had the strongest match for 0.73 to 0.98 of the queries of
an edit, and nothing matched for half or more of the rest); find_copies measured with them:
BENCHMARKS.md, section 8.
"""

import numpy as np
from PIL import Image

from . import copies, images
from .errors import PgvisionError

SIDE = 512            # images are matched at most this large
KEYPOINTS = 500       # ORB keypoints an image (1,500 found no more originals, at 3 times the cost)
FAST_THRESHOLD = 5    # ORB's corner contrast (its default, 20, finds none in a smooth wallpaper)
RATIO = 0.8           # a match counts when clearly nearer than the second nearest
REPROJECTION = 5.0    # pixels: RANSAC's inlier distance
MIN_MATCHES = 12      # fewer agreeing matches are chance
FULL_MATCHES = 40     # this many or more: full confidence

_tools = None


def _cv():
    """OpenCV (on one thread: copies._cv2), its ORB detector and matcher, made once a process."""
    global _tools
    if _tools is None:
        cv2 = copies._cv2()
        _tools = (cv2, cv2.ORB_create(nfeatures=KEYPOINTS, fastThreshold=FAST_THRESHOLD),
                  cv2.BFMatcher(cv2.NORM_HAMMING))
    return _tools


def _keypoints(img):
    """(points as an n x 2 float32 array, descriptors, the area their convex hull spans) of a
    decoded image."""
    cv2, orb, _ = _cv()
    grey = img.convert("L")
    if max(grey.size) > SIDE:
        grey = grey.copy()
        grey.thumbnail((SIDE, SIDE), Image.Resampling.BILINEAR)
    pixels = cv2.equalizeHist(np.ascontiguousarray(np.asarray(grey, dtype=np.uint8)))
    found, descriptors = orb.detectAndCompute(pixels, None)
    points = np.float32([k.pt for k in found]).reshape(-1, 2)
    return points, descriptors, _hull_area(points)


def _hull_area(points):
    """Area of the convex hull of 2-d points (Andrew's monotone chain)."""
    p = sorted(set(map(tuple, np.asarray(points, dtype=np.float64).tolist())))
    if len(p) < 3:
        return 0.0

    def half(pts):
        h = []
        for q in pts:
            while len(h) >= 2 and ((h[-1][0] - h[-2][0]) * (q[1] - h[-2][1])
                                   - (h[-1][1] - h[-2][1]) * (q[0] - h[-2][0])) <= 0:
                h.pop()
            h.append(q)
        return h

    hull = np.array(half(p)[:-1] + half(p[::-1])[:-1])
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def strength(query, stored):
    """0 to 1: how surely and how much of ``stored`` the query shows (both _keypoints)."""
    cv2, _, matcher = _cv()
    (qp, qd, _), (sp, sd, spanned) = query, stored
    if qd is None or sd is None or len(qp) < MIN_MATCHES or len(sp) < MIN_MATCHES:
        return 0.0
    good = [m[0] for m in matcher.knnMatch(qd, sd, k=2)
            if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < MIN_MATCHES:
        return 0.0
    src = qp[[m.queryIdx for m in good]]
    dst = sp[[m.trainIdx for m in good]]
    homography, inliers = cv2.findHomography(src, dst, cv2.RANSAC, REPROJECTION)
    if homography is None:
        return 0.0
    agree = inliers.ravel().astype(bool)
    if agree.sum() < MIN_MATCHES:
        return 0.0
    # both ways: a crop of a picture spans little of the picture around it, and a part of
    # a picture that a larger crop overlaps spans only some of the crop
    cover = (min(1.0, _hull_area(dst[agree]) / max(spanned, 1.0))
             * min(1.0, _hull_area(src[agree]) / max(query[2], 1.0)))
    return float(cover * min(1.0, agree.sum() / FULL_MATCHES))


def query_keypoints(data, limits, check=None):
    """The keypoints a query is matched with: of the image as it is and of its textured
    region, where it has one."""
    img = images.decode(data, grey=True, check=check, reduce_to=copies.WORK_SIDE, **limits)
    work = img
    if max(img.size) > copies.WORK_SIDE:
        work = img.copy()
        work.thumbnail((copies.WORK_SIDE, copies.WORK_SIDE), Image.Resampling.BICUBIC)
    regions = [work]
    region = copies.content(work)
    if region is not None:
        regions.append(region)
    return [_keypoints(r) for r in regions]


def strengths(data, stored, limits, check=None):
    """[strength or None] of a query image against each of ``stored`` (image bytes or None):
    the best of the query's regions; None where a stored image is missing or does not
    decode within the limits (the others are still matched)."""
    query = query_keypoints(data, limits, check)
    out = []
    for s in stored:
        if check is not None:
            check()
        if s is None:
            out.append(None)
            continue
        try:
            keys = _keypoints(images.decode(s, grey=True, reduce_to=SIDE, **limits))
        except PgvisionError:
            out.append(None)
            continue
        out.append(max(strength(q, keys) for q in query))
    return out
