"""What pgvision.find_copies looks for: views of a query image that undo common edits.

An edited copy is searched for as several views, each embedded with the column's model:

- ``full``: the image as it is;
- ``rot90``, ``rot180``, ``rot270``: turned back a quarter, a half, three quarters;
- ``trim``: without a uniform border (a frame, letterboxing, the white around a scan);
- ``content``: the largest textured region, for a picture inside a screenshot or a page:
  interface elements are flat colour, a photo is not;
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

from collections import deque

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
    """(cells, (top, left, bottom, right)) of the largest 4-connected region of a mask."""
    seen = np.zeros_like(mask)
    best, best_box = 0, None
    rows, cols = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        queue, n = deque([(y, x)]), 0
        top, left, bottom, right = y, x, y, x
        while queue:
            cy, cx = queue.popleft()
            n += 1
            top, bottom, left, right = min(top, cy), max(bottom, cy), min(left, cx), max(right, cx)
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < rows and 0 <= nx < cols and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if n > best:
            best, best_box = n, (top, left, bottom, right)
    return best, best_box


def content(img):
    """The bounding box of the largest textured region, cut out; None when it is (nearly)
    the whole image or too small to be a picture."""
    g = np.asarray(img.convert("L"), dtype=np.int16)
    h, w = g.shape
    if h < 4 * BLOCK or w < 4 * BLOCK:
        return None
    textured = (np.diff(g, axis=1)[:-1, :] != 0) | (np.diff(g, axis=0)[:, :-1] != 0)
    rows, cols = textured.shape[0] // BLOCK, textured.shape[1] // BLOCK
    blocks = textured[:rows * BLOCK, :cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).mean((1, 3))
    cells, box = _largest_region(_close(blocks > TEXTURED))
    if box is None or cells < 16:
        return None
    top, left, bottom, right = box
    crop = (left * BLOCK, top * BLOCK, (right + 1) * BLOCK, (bottom + 1) * BLOCK)
    if (crop[2] - crop[0]) * (crop[3] - crop[1]) > 0.9 * w * h:
        return None
    return img.crop(crop)


def inner(img):
    """The central 70% (by side) of the trimmed image."""
    img = trim(img) or img
    w, h = img.size
    return img.crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85)))


def views(img):
    """[(name, penalty, image)] of a decoded image, ``full`` first."""
    work = img
    if max(img.size) > WORK_SIDE:
        work = img.copy()
        work.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BICUBIC)
    out = [("full", work)]
    out += [(name, work.transpose(turn)) for name, turn in _TURNS.items()]
    for name, cut in (("trim", trim), ("content", content)):
        view = cut(work)
        if view is not None:
            out.append((name, view))
    out.append(("inner", inner(work)))
    for sign in (1, -1):
        tilted = work.rotate(sign * TILT, Image.Resampling.BICUBIC)
        out.append((f"tilt{'+' if sign > 0 else '-'}{TILT}", inner(tilted)))
    return [(name, PENALTY[name], view) for name, view in out]


def hash_views(img, check=None):
    """The phash bits (64 '0'/'1' characters) of the image as it is, mirrored and turned."""
    grey = hashes.grey(img, check)
    return [hashes.phash(grey if turn is None else grey.transpose(turn)) for turn in _HASH_TURNS]


def query(model, data, limits, check=None):
    """The views of image bytes for find_copies: [(view, penalty, feature, None)] and
    [('hash', 0, None, bits)] rows, one decode for all."""
    spec = model.spec

    def later(size, pixel_bytes):
        # the working copy and one turned copy of it, the grey copy the hashes read, and
        # the model inputs of every view
        side = min(max(size), WORK_SIDE)
        work = side * side * pixel_bytes
        return 2 * work + size[0] * size[1] + len(PENALTY) * preprocess.resize_bytes(size, pixel_bytes, spec)
    img = images.decode(data, spec["background"], grey=True, check=check, later=later, **limits)
    found = views(img)
    batch = np.stack([preprocess.prepare(view, spec) for _, _, view in found])
    if check is not None:
        check()
    features = model.run(batch, release=True)[0]
    rows = [(name, penalty, feature, None) for (name, penalty, _), feature in zip(found, features)]
    return rows + [("hash", 0.0, None, bits) for bits in hash_views(img, check)]
