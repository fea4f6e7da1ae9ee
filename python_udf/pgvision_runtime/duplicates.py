"""The groups of pgvision.find_duplicates, from the links its index scans found.

A link joins two rows with a verdict: ``exact`` (the same bytes, or the same decoded
pixels: equal hashes and equal features), ``near`` (the same picture re-encoded or resized:
a perceptual hash distance within the threshold) or ``similar`` (a feature distance within
the threshold). Groups are the connected parts of the links (union-find); each row of a
group gets the strongest of its own links and that link's distance.
"""

TIERS = ("exact", "near", "similar")


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
