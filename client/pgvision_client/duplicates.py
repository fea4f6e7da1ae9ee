"""`pgvision duplicates`: the groups of pgvision.find_duplicates, as a table or a contact sheet."""

from psycopg import sql

from . import db, search
from .db import UserError


def find(conn, table, near_bits=8, similar_distance=0.05):
    """[(group_no, id, verdict, distance, name)] of pgvision.find_duplicates, with the row's
    file name (path) where the table has one."""
    db.require_pgvision(conn)
    oid = db.table_oid(conn, table)
    if oid is None:
        raise UserError(f"table {table} does not exist")
    cols = db.columns(conn, oid)
    if "feature" not in cols:
        raise UserError(f"table {table} has no column feature: find_duplicates needs the features")
    rows = conn.execute(
        "SELECT d.group_no, d.id, d.verdict, d.distance FROM pgvision.find_duplicates("
        "%s::oid::regclass, near_bits => %s::int, similar_distance => %s::float8) AS d",
        [oid, near_bits, similar_distance]).fetchall()
    paths = {}
    if rows and "path" in cols and "id" in cols:
        paths = dict(conn.execute(sql.SQL("SELECT id::text, path FROM {t} WHERE id::text = ANY(%s)").format(
            t=db.table_ident(table)), [[r[1] for r in rows]]).fetchall())
    conn.commit()
    return [(g, i, v, d, paths.get(i)) for g, i, v, d in rows]


def format_table(rows):
    header = ["group", "id", "verdict", "distance", "path"]
    body = [[str(g), i, v, f"{d:.4g}", p or ""] for g, i, v, d, p in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in [header, ["-" * w for w in widths]] + body)


def contact_sheet(conn, table, rows, title=None):
    """An HTML page with a section a group: each row's thumbnail, name, verdict and distance."""
    images = search.images_of(conn, table, [r[1] for r in rows]) if rows else {}
    groups = {}
    for g, i, v, d, p in rows:
        groups.setdefault(g, []).append(
            search._cell(search.thumbnail(images.get(i)),
                         [search.row_name({"id": i, "path": p}), v, "" if v == "exact" else f"distance {d:.4g}"]))
    sections = [(f"group {g} ({len(f)} images)", f) for g, f in groups.items()]
    return search.page(title or f"duplicates in {table}: {len(groups)} groups", sections)
