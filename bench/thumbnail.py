"""pgvision.thumbnail: milliseconds per image with the JPEG's reduced decode (Pillow's draft,
what thumbnail does) and with a full decode, side by side, in one process.

    build/venv/bin/python bench/thumbnail.py [--repeat 9]

Images: Debian's darknet photos as they are, and the dog photo enlarged to 12 and 24
megapixels (baseline JPEG, quality 90); 128-pixel JPEG thumbnails. Medians of --repeat runs.
"""

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "python_udf"), str(ROOT / "client")]
from pgvision_client.datasets import PHOTOS, encode, photo  # noqa: E402
from pgvision_runtime import images, thumbnails  # noqa: E402


def full_decode(data, size):
    """The same thumbnail without the reduced decode: decode at full size, then resize."""
    img = images.decode(data, thumbnails.WHITE, grey=True)
    img = img.resize(thumbnails.target(img.size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def median_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    dog = Image.open(io.BytesIO(photo("dog"))).convert("RGB")
    cases = [(n, photo(n)) for n in PHOTOS]
    for w, h in ((4243, 2828), (6000, 4000)):
        cases.append((f"dog {w}x{h}", encode(dog.resize((w, h)), "JPEG", quality=90)))
    print(f"{'image':<18}{'pixels':>12}{'reduced ms':>12}{'full ms':>10}{'ratio':>8}")
    for name, data in cases:
        w, h = Image.open(io.BytesIO(data)).size
        reduced = median_ms(lambda: thumbnails.thumbnail(data, args.size), args.repeat)
        full = median_ms(lambda: full_decode(data, args.size), args.repeat)
        print(f"{name:<18}{w * h:>12,}{reduced:>12.1f}{full:>10.1f}{full / reduced:>8.1f}")


if __name__ == "__main__":
    main()
