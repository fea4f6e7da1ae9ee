"""The groups of pgvision.find_duplicates, from the links its index scans found.

A link joins two rows with a verdict: ``exact`` (the same bytes, or the same decoded
pixels: equal hashes and equal features), ``near`` (the same picture re-encoded or resized:
a perceptual hash distance within the threshold) or ``similar`` (a feature distance within
the threshold). Groups are the connected parts of the links (union-find); each row of a
group gets the strongest of its own links and that link's distance.
"""

TIERS = ("exact", "near", "similar")
PIXEL_SIDE = 32


def small_grey(image, **limits):
    """An image as PIXEL_SIDE x PIXEL_SIDE grey levels (box-filtered, aspect ignored)."""
    from PIL import Image
    import numpy as np

    from . import images

    img = images.decode(image, grey=True, **limits)
    return np.asarray(img.convert("L").resize((PIXEL_SIDE, PIXEL_SIDE), Image.Resampling.BOX),
                      dtype=np.float64)


def pixel_distance(a, b, **limits):
    """Mean absolute difference (0 to 255) of two images' small grey versions: at most about
    1 for a picture and its re-encoded or resized copy, 10 and more for look-alikes whose
    hashes and features are as close (BENCHMARKS.md, section 8)."""
    import numpy as np

    return float(np.abs(small_grey(a, **limits) - small_grey(b, **limits)).mean())


def _order(ids):
    """Rows in key order: numerically when every key is an integer, else as text."""
    try:
        return sorted(ids, key=int)
    except ValueError:
        return sorted(ids)


def groups(links, check=None):
    """[(group_no, id, verdict, distance)] for links [(a, b, verdict, distance)]: groups
    numbered from 1 in the order of their first row, rows in key order within a group."""
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    best = {}
    for i, (a, b, verdict, distance) in enumerate(links):
        if check is not None and i % 10000 == 0:
            check()
        if a == b:
            continue
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        rank = (TIERS.index(verdict), distance)
        for row in (a, b):
            if row not in best or rank < best[row]:
                best[row] = rank
    members = {}
    for row in _order(list(best)):
        members.setdefault(find(row), []).append(row)
    out = []
    for no, rows in enumerate(members.values(), 1):
        for row in rows:
            tier, distance = best[row]
            out.append((no, row, TIERS[tier], float(distance)))
    return out
