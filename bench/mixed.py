"""A mixed collection of real pictures, their edited copies, and look-alikes, from Debian.

Fashion-MNIST alone is square, grey and one tight cluster; what users store is a mix. This
module builds, deterministically, from packages scripts/deps.sh installs:

- pictures: the 7 darknet photos and the wallpapers of mate-backgrounds, ukui-wallpapers,
  lomiri-wallpapers-20.04, gnome-backgrounds and sway-backgrounds (photos of animals,
  flowers, landscapes, cities, and some abstract artwork; 640x424 up to 6028x3391, landscape,
  portrait and square). A wallpaper shipped at several sizes, or as a light and a dark
  variant, is one picture; its other files are kept as ``variants``.
- originals: each wallpaper cut into a grid of tiles with uneven cuts (so the tiles have
  many shapes), each scaled to at most 640 px and stored as JPEG quality 90, plus the darknet
  photos whole; tiles that are flat, or that look like an earlier tile (stripes, gradients),
  are left out.
- distractors: each wallpaper whole and its other files (other sizes, the light variant of a
  dark one), and Fashion-MNIST test thumbnails. Tiles of the same wallpaper are each other's
  look-alikes; no distractor overlaps an original other than as the whole picture does.
- ``EDITS``: 14 ways a copy of a picture gets edited (re-encoding, crops, mirror, grey,
  colour, blur, downscaling, rotation, a screenshot with UI around it, a border, a caption
  and a sticker, perspective, a slight rotation).
"""

import functools
import io
import pathlib
import random
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "client"))
from pgvision_client import datasets  # noqa: E402

PACKAGES = ("mate-backgrounds", "ukui-wallpapers", "lomiri-wallpapers-20.04",
            "gnome-backgrounds", "sway-backgrounds")
SIDE = 640


def jpeg(img, quality=90):
    return datasets.encode(img.convert("RGB"), "JPEG", quality=quality)


def _files(package):
    out = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=True)
    return sorted(pathlib.Path(p) for p in out.stdout.split()
                  if p.lower().endswith((".jpg", ".jpeg", ".png", ".webp")) and pathlib.Path(p).is_file())


def _group(path):
    """The picture a file shows: its name without size, orientation or light/dark suffixes."""
    stem = path.stem
    for cut in ("_Portrait",):
        stem = stem.replace(cut, "")
    parts = [p for p in stem.replace("-", "_").split("_")
             if not (p[:1].isdigit() and "x" in p) and p not in ("d", "l")]
    return path.parent.name + "/" + "_".join(parts)


@functools.lru_cache(None)
def pictures():
    """[(name, path, [variant paths])]: one entry a picture, its largest file first."""
    groups = {}
    for package in PACKAGES:
        for path in _files(package):
            groups.setdefault(_group(path), []).append(path)
    out = []
    for name, paths in sorted(groups.items()):
        sizes = {p: Image.open(p).size for p in paths}
        paths.sort(key=lambda p: (-sizes[p][0] * sizes[p][1], str(p)))
        if min(sizes[paths[0]]) < 400:
            continue
        out.append((name, paths[0], paths[1:]))
    return out


def _load(path):
    img = Image.open(path)
    img.draft("RGB", (2 * SIDE, 2 * SIDE))  # a JPEG decodes at a smaller DCT scale
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, mask=img.split()[-1])
        img = flat
    return img.convert("RGB")


def _scaled(img, side=SIDE):
    img = img.copy()
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return img


def _cuts(length, n, rng):
    """n+1 cut positions along a side, unevenly spaced."""
    weights = np.array([rng.uniform(0.6, 1.4) for _ in range(n)])
    edges = np.concatenate([[0], np.cumsum(weights) / weights.sum()]) * length
    return [int(round(e)) for e in edges]


def _tiles(img, rng):
    w, h = img.size
    nx = 2 if w < 1500 else 3 if w < 3000 else 4
    ny = 2 if h < 1500 else 3 if h < 3000 else 4
    xs, ys = _cuts(w, nx, rng), _cuts(h, ny, rng)
    for y0, y1 in zip(ys, ys[1:]):
        for x0, x1 in zip(xs, xs[1:]):
            if x1 - x0 >= 96 and y1 - y0 >= 96:
                yield img.crop((x0, y0, x1, y1))


def _signature(img):
    g = np.asarray(img.convert("L").resize((24, 24), Image.Resampling.BILINEAR), dtype=np.float64)
    return g.std(), (g - g.mean()).ravel() / (np.linalg.norm(g - g.mean()) + 1e-9)


@functools.lru_cache(None)
def collection(distractors=3000):
    """(originals, distractors): lists of (name, JPEG or PNG bytes). Deterministic."""
    originals, extra, kept = [], [], []
    for name, path, variants in pictures():
        rng = random.Random(name)
        img = _load(path)
        for i, tile in enumerate(_tiles(img, rng)):
            std, sig = _signature(tile)
            if std < 12 or any(float(sig @ s) > 0.9 for s in kept):
                continue
            kept.append(sig)
            originals.append((f"{name}#{i}", jpeg(_scaled(tile))))
        extra.append((f"{name}#whole", jpeg(_scaled(img))))
        for i, variant in enumerate(variants):
            extra.append((f"{name}#variant{i}", jpeg(_scaled(_load(variant)))))
    for n in datasets.PHOTOS:
        originals.append((f"darknet/{n}", datasets.photo(n)))
    fashion = datasets.Fashion("test")
    rest = distractors - len(extra)
    others = extra + [(f"fashion/{i}", fashion.png(i)) for i in fashion.balanced(rest // 10 + 1, rest)]
    return originals, others[:distractors]


# ---------------------------------------------------------------- labelled cut-outs

@functools.lru_cache(None)
def labelled_cutouts(per_picture=12):
    """(JPEG bytes, labels): ``per_picture`` cut-outs of each wallpaper and darknet photo,
    labelled by the picture they come from; a retrieval set of real, non-square photos.

    Each cut-out covers 20 to 60 % of its picture, with an aspect ratio between 1:2 and 2:1
    of the picture's own, at a random place, scaled to at most 640 px, JPEG quality 85. Two
    cut-outs of one picture show overlapping or neighbouring parts of one scene, as photos of
    one subject, place or product do. Deterministic.
    """
    sources = [(name, _load(path)) for name, path, _ in pictures()]
    sources += [(f"darknet/{n}", Image.open(io.BytesIO(datasets.photo(n))).convert("RGB"))
                for n in datasets.PHOTOS]
    out, labels = [], []
    for label, (name, img) in enumerate(sources):
        rng = random.Random(f"cutouts/{name}")
        w, h = img.size
        for _ in range(per_picture):
            area = rng.uniform(0.2, 0.6)
            aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
            cw = min(w, int(round(w * np.sqrt(area * aspect))))
            ch = min(h, int(round(h * np.sqrt(area / aspect))))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            out.append(jpeg(_scaled(img.crop((x, y, x + cw, y + ch))), 85))
            labels.append(label)
    return out, np.asarray(labels)


# ---------------------------------------------------------------- edits

def _screenshot(img, rng):
    """The picture at 300 px wide inside an 800x600 window with a title bar, a side bar
    and lines of text."""
    canvas = Image.new("RGB", (800, 600), (236, 236, 236))
    d = ImageDraw.Draw(canvas)
    d.rectangle((0, 0, 800, 32), fill=(52, 58, 64))
    d.rectangle((0, 32, 180, 600), fill=(248, 248, 250))
    for y in range(60, 560, 28):
        d.rectangle((20, y, 20 + rng.randint(60, 140), y + 10), fill=(120, 120, 130))
    pic = img.copy()
    pic.thumbnail((300, 300 * 3), Image.Resampling.LANCZOS)
    x, y = rng.randint(200, 800 - pic.width - 10), rng.randint(48, max(48, 600 - pic.height - 10))
    canvas.paste(pic.crop((0, 0, pic.width, min(pic.height, 600 - y))), (x, y))
    for yy in range(y + pic.height + 16, 590, 24):
        d.rectangle((x, yy, x + rng.randint(150, 300), yy + 9), fill=(90, 90, 96))
    return canvas


def _caption(img, rng):
    out = img.copy()
    d = ImageDraw.Draw(out, "RGBA")
    w, h = out.size
    d.rectangle((0, int(h * 0.84), w, h), fill=(0, 0, 0, 150))
    d.text((int(w * 0.04), int(h * 0.87)), "SALE -30% TODAY ONLY", fill=(255, 255, 255, 255))
    r = int(min(w, h) * 0.14)
    cx, cy = int(w * 0.82), int(h * 0.18)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(230, 40, 40, 255))
    return out


def _perspective(img, rng):
    w, h = img.size
    j = lambda s: rng.uniform(0, 0.08) * s  # noqa: E731
    quad = (j(w), j(h), j(w), h - j(h), w - j(w), h - j(h), w - j(w), j(h))
    return img.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.BICUBIC)


def _crop(img, frac, rng, center=False):
    w, h = img.size
    cw, ch = max(16, int(w * frac)), max(16, int(h * frac))
    x = (w - cw) // 2 if center else rng.randint(0, w - cw)
    y = (h - ch) // 2 if center else rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


EDITS = {
    "jpeg q15": lambda img, rng: jpeg(img, 15),
    "crop 70% off-centre": lambda img, rng: jpeg(_crop(img, 0.7, rng)),
    "crop 80% centre": lambda img, rng: jpeg(_crop(img, 0.8, rng, center=True)),
    "mirror": lambda img, rng: jpeg(ImageOps.mirror(img)),
    "grey": lambda img, rng: jpeg(img.convert("L")),
    "brightness/contrast": lambda img, rng: jpeg(
        ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1.3)).enhance(0.75)),
    "blur r3": lambda img, rng: jpeg(img.filter(ImageFilter.GaussianBlur(3))),
    "downscale 1/3": lambda img, rng: jpeg(img.resize((max(8, img.width // 3), max(8, img.height // 3)),
                                                      Image.Resampling.BILINEAR)),
    "rotate 90": lambda img, rng: jpeg(img.transpose(Image.Transpose.ROTATE_90)),
    "screenshot": lambda img, rng: datasets.encode(_screenshot(img, rng)),
    "border": lambda img, rng: jpeg(ImageOps.expand(img, border=max(4, int(0.12 * max(img.size))),
                                                    fill=rng.choice([(255, 255, 255), (0, 0, 0), (200, 30, 30)]))),
    "caption + sticker": lambda img, rng: jpeg(_caption(img, rng)),
    "perspective": lambda img, rng: jpeg(_perspective(img, rng)),
    "rotate 10": lambda img, rng: jpeg(img.rotate(10, Image.Resampling.BICUBIC, expand=True,
                                                  fillcolor=(255, 255, 255))),
}


def edited(name, data, edit):
    """The bytes of ``edit`` applied to an original; the same every time."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return EDITS[edit](img, random.Random(f"{name}/{edit}"))


if __name__ == "__main__":
    originals, others = collection()
    print(f"{len(pictures())} pictures, {len(originals)} originals, {len(others)} distractors")
    for name, path, variants in pictures():
        print(f"  {name}: {path.name} {Image.open(path).size} +{len(variants)} variants")
