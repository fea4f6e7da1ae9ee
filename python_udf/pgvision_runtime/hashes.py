"""Perceptual hashes of images: 64 bits each, compared by Hamming distance.

``phash`` and ``dhash`` give, bit for bit, what the PyPI package imagehash (4.3.2) gives for
the image images.decode returns (EXIF orientation applied, transparency on white): its
``phash(img)`` and ``dhash(img)`` with their defaults, bits in the order of
``str(imagehash_value)`` read as a 64-bit binary number, the first bit its highest.

- dhash: the image in grey, resized to 9x8 with Lanczos; a bit per pixel of the 8 rows but
  the last column, set where the pixel on its right is brighter.
- phash: the image in grey, resized to 32x32 with Lanczos; its 2-D DCT-II (scipy.fftpack's
  unnormalized ``dct`` along axis 0, then along axis 1); the 8x8 lowest frequencies; a bit
  for each, set where it is above their median, row by row.

Only numpy: the DCT's 8 lowest frequencies of 32 samples are the product with a matrix of
cosines, in float64, which differs from scipy's FFT-based transform by about 1e-10 here
(the coefficients reach 4 * 255 * 1024). Where scipy's and our rounding could disagree, a
coefficient equal to the median in exact arithmetic, this module gives the exact answer:
not above. A coefficient within ``TIE`` of the median counts as equal to it. Equal in exact
arithmetic happens for real images: a flat image (its AC coefficients are all 0), one
constant along its rows or columns, a mirror-symmetric one (its odd frequencies across are
0). scipy computes such zeros as exact zeros, and imagehash then agrees with us. The one
case without parity: a grey 32x32 resize symmetric about its diagonal (pixel [i, j] equal
to [j, i]: seen for a 32x32 image, which the resize leaves as it is; Pillow's two passes,
rounded to 8 bits between them, break the symmetry of other sizes) has its coefficients in
equal pairs, and when a pair holds the median, scipy's rounding may leave one of the two
1e-13 above the other; imagehash's bit there is the sign of that noise, which no other
implementation reproduces, and ours is the exact answer (neither is above the median).
Real margins are far wider than ``TIE``: the coefficient nearest its median among the test
images (tests/test_hashes.py, which checks every one against scipy) is 1.45 away.
"""

import numpy as np
from PIL import Image

from . import images, preprocess

HASH_SIZE = 8
PHASH_SIDE = 32  # imagehash's hash_size * highfreq_factor (8 * 4)
# Coefficients closer than this to the median are equal to it (see above). The float64
# error of a coefficient is bounded by about 1e-8 (32-term sums of terms up to 1e6 at
# 2**-53), the smallest real margin seen is 1.45.
TIE = 1e-6


def _dct_matrix(n, keep):
    """The first ``keep`` rows of scipy.fftpack's DCT-II of ``n`` samples, unnormalized:
    y[k] = 2 * sum(x[j] * cos(pi * k * (2j + 1) / (2n)))."""
    k = np.arange(keep)[:, None]
    j = np.arange(n)[None, :]
    # the angle reduced modulo 2 pi in integers first, so that cos gets a small argument
    return 2.0 * np.cos(np.pi * ((k * (2 * j + 1)) % (4 * n)) / (2 * n))


_DCT = _dct_matrix(PHASH_SIDE, HASH_SIZE)


def _resize_spec(width, height):
    return {"size": [height, width], "fit": "stretch", "resample": "lanczos"}


def decode(data, max_pixels=images.DEFAULT_MAX_PIXELS, max_bytes=images.DEFAULT_MAX_BYTES,
           check=None, sides=(PHASH_SIDE, PHASH_SIDE)):
    """The image as the hashes read it: embed's decode (its limits and errors), in grey.

    No reduced JPEG decode (Pillow's draft): its pixels differ from the full decode's,
    and so would the bits. An opaque grey image stays one channel (images.decode's grey),
    the same pixels as the grey of its RGB form (Pillow's grey weights add up to 1 exactly).
    """
    def later(size, pixel_bytes):
        # the grey copy of an RGB image, and the resize of the grey image
        grey = size[0] * size[1] if pixel_bytes > 1 else 0
        return grey + preprocess.resize_bytes(size, 1, _resize_spec(*sides))
    img = images.decode(data, max_pixels=max_pixels, max_bytes=max_bytes, grey=True,
                        check=check, later=later)
    return grey(img, check)


def grey(img, check=None):
    """imagehash's ``image.convert("L")``, without a copy of an image already grey."""
    if img.mode != "L":
        img = img.convert("L")
        if check is not None:
            check()
    return img


def _image(image, limits, check, sides):
    if isinstance(image, Image.Image):
        return grey(image, check)
    return decode(image, check=check, sides=sides, **limits)


def _bits(flags):
    return "".join("1" if f else "0" for f in np.asarray(flags).ravel())


def phash_bits(img):
    """The 64 phash bits of a grey Pillow image, as booleans in imagehash's [8, 8] order."""
    pixels = np.asarray(img.resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS),
                        dtype=np.float64)
    low = lowfreq(pixels)
    median = np.median(low)
    return low - median > TIE


def lowfreq(pixels):
    """The 8x8 lowest frequencies of the 2-D DCT-II of 32x32 pixels (float64), as
    scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:8, :8] gives them."""
    return _DCT @ pixels @ _DCT.T


def dhash_bits(img):
    """The 64 dhash bits of a grey Pillow image, as booleans in imagehash's [8, 8] order."""
    pixels = np.asarray(img.resize((HASH_SIZE + 1, HASH_SIZE), Image.Resampling.LANCZOS))
    return pixels[:, 1:] > pixels[:, :-1]


def phash(image, max_pixels=images.DEFAULT_MAX_PIXELS, max_bytes=images.DEFAULT_MAX_BYTES,
          check=None):
    """The perceptual (DCT) hash of image bytes or a Pillow image, as 64 '0'/'1' characters
    (the text of a PostgreSQL bit(64))."""
    img = _image(image, {"max_pixels": max_pixels, "max_bytes": max_bytes}, check,
                 (PHASH_SIDE, PHASH_SIDE))
    return _bits(phash_bits(img))


def dhash(image, max_pixels=images.DEFAULT_MAX_PIXELS, max_bytes=images.DEFAULT_MAX_BYTES,
          check=None):
    """The difference hash of image bytes or a Pillow image, as 64 '0'/'1' characters."""
    img = _image(image, {"max_pixels": max_pixels, "max_bytes": max_bytes}, check,
                 (HASH_SIZE + 1, HASH_SIZE))
    return _bits(dhash_bits(img))


def to_hex(bits):
    """64 '0'/'1' characters as imagehash writes its hash: 16 hexadecimal digits."""
    return "%0*x" % (len(bits) // 4, int(bits, 2))


def hamming(a, b):
    """The number of places where two bit strings differ (pgvector's <~>)."""
    return sum(x != y for x, y in zip(a, b))
