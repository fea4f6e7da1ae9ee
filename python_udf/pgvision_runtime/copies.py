"""What pgvision.find_copies looks for: views of a query image that undo common edits.

An edited copy is searched for as several views, each embedded with the column's model:

- ``full``: the image as it is;
- ``rot90``, ``rot180``, ``rot270``: turned back a quarter, a half, three quarters;
- ``trim``: without a uniform border (a frame, letterboxing, the white around a scan);
- ``content``: the picture inside a screenshot or a page: what is left when the flat colours
  that reach the image's edge (window and page backgrounds, bars, panels) are taken away,
  else the largest textured region;
- ``inner``: the central 70% of the trimmed image, for a slight perspective whose corners
  are fill, and for captions and stickers near the edges;
- ``tilt+10``, ``tilt-10``: turned back 10 degrees either way, its centre, for a copy
  scanned or photographed askew.

Each view has a penalty subtracted from its cosine similarity, so that it wins only when
it matches clearly better than the full image does (chosen on bench/mixed.py's collection,
100 originals x 14 edits scored exactly offline; find_copies measured with them:
BENCHMARKS.md, section 8). And the image's perceptual hash (hashes.phash) as it is,
mirrored and turned, for the edits that leave its low frequencies alone (re-encoding,
blur, downscaling, grey, brightness), where features move more than hashes do.
"""

import functools
import math

import numpy as np
from PIL import Image, ImageChops

from . import hashes, images, preprocess

# The working copy the views are cut from: larger than any model's input, small enough
# that turning it three times costs little.
WORK_SIDE = 1024
PENALTY = {"full": 0.0, "rot90": 0.05, "rot180": 0.05, "rot270": 0.05, "trim": 0.0,
           "content": 0.02, "inner": 0.05, "tilt+10": 0.05, "tilt-10": 0.05}
TILT = 10  # degrees
BORDER_DIFFERENCE = 24  # a border pixel differs from the corner by at most this (0-255)
BLOCK = 8               # content: textured blocks of BLOCK x BLOCK pixels
TEXTURED = 0.2          # a block is textured when this share of its pixels differ from a neighbour
BACKDROPS = 8           # content: the edge's most common colours that may be a screen's backdrop
BACKDROP = 0.02         # content: a backdrop colour covers at least this share of the edge
FLAT = 6                # content: a backdrop's pixels differ from its colour by at most this (0-255)
_TURNS = {"rot90": Image.Transpose.ROTATE_90, "rot180": Image.Transpose.ROTATE_180,
          "rot270": Image.Transpose.ROTATE_270}
_HASH_TURNS = [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90,
               Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270]


def trim(img):
    """The image without a border of the colour of its top-left pixel; None without one."""
    rgb = img.convert("RGB")
    corner = Image.new("RGB", rgb.size, rgb.getpixel((0, 0)))
    box = ImageChops.difference(rgb, corner).convert("L").point(
        lambda v: 255 if v > BORDER_DIFFERENCE else 0).getbbox()
    if box is None or min(box[2] - box[0], box[3] - box[1]) < 16:
        return None
    if (box[2] - box[0]) * (box[3] - box[1]) > 0.95 * rgb.width * rgb.height:
        return None
    return img.crop(box)


def _close(mask, steps=2):
    """Morphological closing with a cross, ``steps`` times (scipy.ndimage.binary_closing)."""
    def grow(m):
        out = m.copy()
        out[1:] |= m[:-1]
        out[:-1] |= m[1:]
        out[:, 1:] |= m[:, :-1]
        out[:, :-1] |= m[:, 1:]
        return out

    def shrink(m):
        out = m.copy()
        out[1:] &= m[:-1]
        out[:-1] &= m[1:]
        out[:, 1:] &= m[:, :-1]
        out[:, :-1] &= m[:, 1:]
        out[0, :] = out[-1, :] = False
        out[:, 0] = out[:, -1] = False
        return out

    for _ in range(steps):
        mask = grow(mask)
    for _ in range(steps):
        mask = shrink(mask)
    return mask


def _largest_region(mask):
    """(cells, (top, left, bottom, right)) of the largest 4-connected region of a mask; of
    regions equally large, the one whose first cell comes first row by row.

    Labelled run by run (a run: the cells of one row between two gaps), so the Python loop
    is over runs, not cells: a screenshot's mask has a few runs a row and thousands of cells.
    """
    parent, runs = [], []

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous = []
    edges = np.zeros(mask.shape[1] + 2, dtype=bool)
    for y in range(mask.shape[0]):
        edges[1:-1] = mask[y]
        bounds = np.flatnonzero(edges[1:] != edges[:-1])
        current, j = [], 0
        for start, end in zip(bounds[0::2].tolist(), bounds[1::2].tolist()):
            i = len(runs)
            runs.append((y, start, end))
            parent.append(i)
            current.append(i)
            while j < len(previous) and runs[previous[j]][2] <= start:
                j += 1
            k = j
            while k < len(previous) and runs[previous[k]][1] < end:
                a, b = root(i), root(previous[k])
                parent[max(a, b)] = min(a, b)  # the root is the region's first run
                k += 1
        previous = current
    regions = {}
    for i, (y, start, end) in enumerate(runs):
        r = regions.setdefault(root(i), [0, y, start, y, end - 1])
        r[0] += end - start
        r[1], r[2] = min(r[1], y), min(r[2], start)
        r[3], r[4] = max(r[3], y), max(r[4], end - 1)
    if not regions:
        return 0, None
    first = min(regions, key=lambda i: (-regions[i][0], i))
    cells, top, left, bottom, right = regions[first]
    return cells, (top, left, bottom, right)


@functools.lru_cache(maxsize=None)
def _cv2():
    """OpenCV, imported once a process, on one thread: a query costs the server one core."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def _interface(img):
    """The bounding box (left, top, right, bottom) of the largest region left when the flat
    colours around it are taken away: each colour common on the image's edge (a share
    BACKDROP of it, within FLAT levels), where it reaches the edge. A screenshot's window
    and page backgrounds, bars and panels reach the edge; the picture on them does not,
    however flat its own colours are. None when that leaves (nearly) the whole image."""
    cv2 = _cv2()
    a = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    coarse = edge.astype(np.int32) // 8  # JPEG noise moves a flat colour by a few levels
    keys = coarse[:, 0] * 1024 + coarse[:, 1] * 32 + coarse[:, 2]
    found, counts = np.unique(keys, return_counts=True)
    backdrop = np.zeros(a.shape[:2], dtype=bool)
    for key in found[np.argsort(-counts, kind="stable")][:BACKDROPS]:
        if counts[found == key][0] < BACKDROP * len(edge):
            break
        colour = np.median(edge[keys == key], axis=0).astype(np.int16)
        near = cv2.inRange(a, np.clip(colour - FLAT, 0, 255).astype(np.uint8),
                           np.clip(colour + FLAT, 0, 255).astype(np.uint8))
        _, labels = cv2.connectedComponents(near, connectivity=4)
        reached = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        backdrop |= np.isin(labels, reached[reached != 0])
    if not backdrop.any():
        return None
    n, _, stats, _ = cv2.connectedComponentsWithStats((~backdrop).astype(np.uint8), connectivity=8)
    if n < 2:
        return None
    x, y, w, h = (int(v) for v in stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), :4])
    return x, y, x + w, y + h


def _textured(img):
    """The bounding box of the largest textured region: a picture on a busy backdrop (a
    desktop wallpaper), where no flat colour surrounds it."""
    g = np.asarray(img.convert("L"), dtype=np.int16)
    textured = (np.diff(g, axis=1)[:-1, :] != 0) | (np.diff(g, axis=0)[:, :-1] != 0)
    rows, cols = textured.shape[0] // BLOCK, textured.shape[1] // BLOCK
    blocks = textured[:rows * BLOCK, :cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).mean((1, 3))
    cells, box = _largest_region(_close(blocks > TEXTURED))
    if box is None or cells < 16:
        return None
    top, left, bottom, right = box
    # the closing clears the mask's outer two blocks: a region out to them is the whole image
    if top <= 2 and left <= 2 and bottom >= rows - 3 and right >= cols - 3:
        return None
    return left * BLOCK, top * BLOCK, (right + 1) * BLOCK, (bottom + 1) * BLOCK


def content(img):
    """The picture inside a screenshot or a page, cut out: the region the flat colours
    around it leave (_interface), else the largest textured region; None when it is (nearly)
    the whole image or too small to be a picture."""
    w, h = img.size
    if h < 4 * BLOCK or w < 4 * BLOCK:
        return None
    for find in (_interface, _textured):
        box = find(img)
        if box is None or min(box[2] - box[0], box[3] - box[1]) < 4 * BLOCK:
            continue
        if (box[2] - box[0]) * (box[3] - box[1]) > 0.9 * w * h:
            continue
        return img.crop(box)
    return None


def inner(img):
    """The central 70% (by side) of the trimmed image."""
    img = trim(img) or img
    w, h = img.size
    return img.crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85)))


def _tilted_centre(img, degrees):
    """The central 70% (by side) of the image turned by ``degrees`` (Image.rotate's filling
    black corners), computed for those pixels only: one affine transform, Image.rotate's
    own, moved to the crop's corner."""
    w, h = img.size
    left, top = int(w * 0.15), int(h * 0.15)
    a = -math.radians(degrees)
    cos, sin = round(math.cos(a), 15), round(math.sin(a), 15)
    cx, cy = w / 2.0, h / 2.0
    # Image.rotate maps an output pixel (x, y) to (cos x + sin y + c, -sin x + cos y + f)
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    matrix = (cos, sin, c + cos * left + sin * top, -sin, cos, f - sin * left + cos * top)
    return img.transform((int(w * 0.85) - left, int(h * 0.85) - top), Image.Transform.AFFINE,
                         matrix, Image.Resampling.BICUBIC)


def views(img, turns=True, full_only=False):
    """[(name, penalty, image)] of a decoded image, ``full`` first; without ``turns``, the
    quarter turns are left out (query turns the model input instead)."""
    work = img
    if max(img.size) > WORK_SIDE:
        work = img.copy()
        work.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BICUBIC)
    if full_only:
        return [("full", PENALTY["full"], work)]
    out = [("full", work)]
    if turns:
        out += [(name, work.transpose(turn)) for name, turn in _TURNS.items()]
    for name, cut in (("trim", trim), ("content", content)):
        view = cut(work)
        if view is not None:
            out.append((name, view))
    out.append(("inner", inner(work)))
    for sign in (1, -1):
        out.append((f"tilt{'+' if sign > 0 else '-'}{TILT}", _tilted_centre(work, sign * TILT)))
    return [(name, PENALTY[name], view) for name, view in out]


def hash_views(img, check=None):
    """The phash bits (64 '0'/'1' characters) of the image as it is, mirrored and turned."""
    grey = hashes.grey(img, check)
    return [hashes.phash(grey if turn is None else grey.transpose(turn)) for turn in _HASH_TURNS]


def query(model, data, limits, check=None, quick=False):
    """The views of image bytes for find_copies: [(view, penalty, feature, None)] and
    [('hash', 0, None, bits)] rows, one decode for all; ``quick``: the ``full`` view alone
    and the hashes, what finds a re-encoded, resized or recoloured copy."""
    spec = model.spec

    def later(size, pixel_bytes):
        # the working copy and one turned copy of it, the grey copy the hashes read, and
        # the model inputs of every view
        side = min(max(size), WORK_SIDE)
        work = side * side * pixel_bytes
        return 2 * work + size[0] * size[1] + len(PENALTY) * preprocess.resize_bytes(size, pixel_bytes, spec)
    img = images.decode(data, spec["background"], grey=True, check=check, later=later, **limits)
    # With a square input, a quarter turn of the image and of its model input are the same
    # up to the resize's rounding (feature cosine above 0.999), and turning the input is free.
    square = spec["size"][0] == spec["size"][1]
    found = views(img, turns=not square, full_only=quick)
    inputs = [preprocess.prepare(view, spec) for _, _, view in found]
    if square and not quick:
        found[1:1] = [(name, PENALTY[name], None) for name in _TURNS]
        inputs[1:1] = [np.rot90(inputs[0], k, axes=(1, 2)) for k in (1, 2, 3)]
    batch = np.stack(inputs)
    if check is not None:
        check()
    features = model.run(batch, release=True)[0]
    rows = [(name, penalty, feature, None) for (name, penalty, _), feature in zip(found, features)]
    return rows + [("hash", 0.0, None, bits) for bits in hash_views(img, check)]
