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

A flat drawing or a smooth gradient has too few corners for that, so the query's pixels are
also looked for in the stored image (contained: template matching at a few scales, unturned),
and a row's strength is the larger of the two.

Images are decoded by images.decode (Pillow, within the server's limits), so OpenCV's own
decoders never read stored or query bytes: it is given pixels. They are matched grey, at
most SIDE pixels, their histogram equalised (smooth wallpapers and gradients give ORB few
corners at their own contrast). The query is matched as it is and, where it has one, as
the picture inside it (copies.content: a picture inside a screenshot is small on the
screen). The keypoint settings were chosen on bench/mixed.py's collection (40 to 47
originals, 4 to 7 edits, each query against the original, its sibling tiles, the wallpaper
whole and 5 other originals: the original had the strongest match for 0.73 to 0.98 of the
queries of an edit, and nothing matched for half or more of the rest); the pixel
comparison's on 60 originals x 7 edits against the 10 best rows by features (with it, the
original ranked first for 0.97 to 1.00 of an edit's queries, against 0.88 to 1.00 with
keypoints alone; crops of 70 % were 0.88 and 1.00); find_copies measured with them:
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
TEMPLATE_SIDE = 128   # contained: stored images are compared at most this large
SHARES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)  # of the stored image's side
MIN_TEMPLATE = 12     # contained: pixels, the smallest side a query is compared at
MIN_CONTRAST = 4      # contained: the template's grey levels' standard deviation
MIN_CORRELATION = 0.9
MAX_DIFFERENCE = 10   # contained: mean absolute colour difference (0-255) where it lies

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


def _small(img, side=TEMPLATE_SIDE):
    """(grey, RGB) uint8 arrays of a decoded image at most ``side`` pixels, area-averaged."""
    cv2 = _cv()[0]
    rgb = img.convert("RGB")
    if max(rgb.size) > side:
        rgb = rgb.copy()
        rgb.thumbnail((side, side), Image.Resampling.BOX)
    rgb = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), rgb


def contained(query, stored):
    """0 to 1: the share of ``stored``'s area that the query is found in pixel for pixel,
    unturned (both _small of the query at most twice TEMPLATE_SIDE): the query scaled to
    cover each of SHARES of the stored image's width or height, and its best place by
    normalised cross-correlation of grey levels, counts when that correlation is at least
    MIN_CORRELATION and the colours there differ by at most MAX_DIFFERENCE levels on
    average; the share of the stored image's area it covers at the largest scale that
    counts. Keypoint matching needs corners; a flat drawing or a smooth gradient has few,
    and a crop of it lies in its original all the same."""
    cv2 = _cv()[0]
    (qg, qc), (sg, sc) = query, stored
    qh, qw = qg.shape
    sh, sw = sg.shape
    for share in SHARES:
        scale = share * min(sw / qw, sh / qh)
        tw, th = int(round(qw * scale)), int(round(qh * scale))
        if min(tw, th) < MIN_TEMPLATE or tw > sw or th > sh:
            continue
        grey = cv2.resize(qg, (tw, th), interpolation=cv2.INTER_AREA)
        if grey.std() < MIN_CONTRAST:  # a flat template lies anywhere flat
            return 0.0
        _, best, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(sg, grey, cv2.TM_CCOEFF_NORMED))
        if best < MIN_CORRELATION:
            continue
        colour = cv2.resize(qc, (tw, th), interpolation=cv2.INTER_AREA)
        if cv2.absdiff(sc[y:y + th, x:x + tw], colour).mean() <= MAX_DIFFERENCE:
            return tw * th / (sw * sh)
    return 0.0


def query_regions(data, limits, check=None):
    """The regions of a query that are matched: the image as it is and, where it has one,
    its content region (copies.content: the picture inside a screenshot)."""
    img = images.decode(data, grey=True, check=check, reduce_to=copies.WORK_SIDE, **limits)
    work = img
    if max(img.size) > copies.WORK_SIDE:
        work = img.copy()
        work.thumbnail((copies.WORK_SIDE, copies.WORK_SIDE), Image.Resampling.BICUBIC)
    regions = [work]
    region = copies.content(work)
    if region is not None:
        regions.append(region)
    # a query is scaled down to a template at most TEMPLATE_SIDE: from twice that, the
    # area averaging is still true
    return [(_keypoints(r), _small(r, 2 * TEMPLATE_SIDE)) for r in regions]


def strengths(data, stored, limits, check=None):
    """[strength or None] of a query image against each of ``stored`` (image bytes or None):
    the best of the query's regions by keypoints (strength) or by pixels (contained); None
    where a stored image is missing or does not decode within the limits (the others are
    still matched)."""
    query = query_regions(data, limits, check)
    out = []
    for s in stored:
        if check is not None:
            check()
        if s is None:
            out.append(None)
            continue
        try:
            img = images.decode(s, grey=True, reduce_to=SIDE, **limits)
        except PgvisionError:
            out.append(None)
            continue
        keys, small = _keypoints(img), _small(img)
        out.append(max(max(strength(k, keys), contained(p, small)) for k, p in query))
    return out
