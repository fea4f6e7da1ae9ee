"""`pgvision search`: the nearest images to a query image, as a table or an HTML contact sheet.

The search itself is pgvision.search; this module checks the table first (to say what is
missing in the client's words), prints the rows and draws the contact sheet.
"""

import base64
import html
import io
import warnings

from PIL import Image, ImageOps
from psycopg import sql
from psycopg.rows import dict_row

from . import db
from .db import UserError


def search(conn, table, image, k=10, metric=None, where=None, model=None):
    """The k rows nearest to ``image`` (bytes), by pgvision.search: dicts with id (the primary
    key as text), path, class and distance. ``metric`` None: the one the feature column's
    index was built for."""
    db.require_pgvision(conn)
    oid = db.table_oid(conn, table)
    if oid is None:
        raise UserError(f"table {table} does not exist")
    cols = db.columns(conn, oid)
    missing = [c for c in ("id", "feature") if c not in cols]
    if missing:
        raise UserError(f"table {table} has no column(s) {', '.join(missing)}: search needs id and feature")
    # --model, or the model an older client named in the column's comment; else the server
    # embeds with the model it recorded for the column
    model = model or db.table_model(conn, oid)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT s.id, s.item ->> 'path' AS path, s.item ->> 'class' AS class, s.distance"
            " FROM pgvision.search(%(t)s::oid::regclass, %(image)s::bytea, k => %(k)s::int,"
            "                      metric => %(metric)s::text, filter => %(where)s::text"
            + (", model => %(model)s::text" if model else "") + ") AS s"
            " ORDER BY s.rank",
            {"t": oid, "image": image, "k": k, "metric": metric, "where": where, "model": model}).fetchall()
    conn.commit()
    return rows


def images_of(conn, table, ids):
    """{id: image bytes} of the rows whose id (as text, as pgvision.search returns it) is in ``ids``."""
    id_type = db.columns(conn, db.table_oid(conn, table))["id"]
    rows = conn.execute(sql.SQL("SELECT id::text, image FROM {t} WHERE id = ANY(%s::text[]::{ty}[])").format(
        t=db.table_ident(table), ty=sql.SQL(id_type)), [list(ids)]).fetchall()
    conn.commit()
    return {i: bytes(img) if img is not None else None for i, img in rows}


def format_table(rows):
    """The results as aligned text columns."""
    header = ["rank", "id", "class", "distance", "path"]
    body = [[str(n), str(r["id"]), r["class"] or "", f"{r['distance']:.4f}", r["path"] or ""]
            for n, r in enumerate(rows, 1)]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    right = {0, 1, 3}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


# -- HTML contact sheet -------------------------------------------------------------------

def thumbnail(data, size=160):
    """A base64 JPEG thumbnail of image bytes, on white where they are transparent, or None
    when they do not decode."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img).convert("RGB")
            if max(img.size) < size:  # small images scaled up by a whole factor, crisp
                scale = size // max(img.size)
                img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
    except Exception:  # Pillow raises many types for damaged files
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(thumb, lines):
    e = html.escape
    img = (f'<img src="data:image/jpeg;base64,{thumb}" alt="{e(lines[0])}">' if thumb
           else '<div class="missing">no image</div>')
    text = "".join(f"<div>{e(x)}</div>" for x in lines if x)
    return f'<figure>{img}<figcaption>{text}</figcaption></figure>'


def page(title, sections):
    """A self-contained HTML page of sections (heading, [figure HTML]), the first figure of
    a section framed when it is the query."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}section{margin-bottom:2em}"
        ".row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}"
        "figure{margin:0;width:170px;font-size:12px;text-align:center;overflow-wrap:anywhere}"
        "figure img{max-width:160px;max-height:160px;border:1px solid #ccc}"
        "figure.query img{border:3px solid #c33}.missing{width:160px;height:60px;background:#eee}"
        "</style></head><body>", f"<h1>{e(title)}</h1>"]
    for heading, figures in sections:
        parts.append(f"<section><h2>{e(heading)}</h2><div class=\"row\">")
        parts.extend(figures)
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def row_name(row):
    """What a contact sheet calls a row: its file name, else its id."""
    return row["path"].rsplit("/", 1)[-1] if row.get("path") else f"id {row['id']}"


def contact_sheet(sections, title="pgvision search"):
    """A self-contained HTML page; each section is (heading, query name, query bytes, rows, images)."""
    out = []
    for heading, query_name, query_bytes, rows, images in sections:
        figures = [_cell(thumbnail(query_bytes), ["query", query_name]).replace("<figure>", '<figure class="query">', 1)]
        figures += [_cell(thumbnail(images.get(r["id"])),
                          [f"{n}. {row_name(r)}", r["class"] or "", f"distance {r['distance']:.4f}"])
                    for n, r in enumerate(rows, 1)]
        out.append((heading, figures))
    return page(title, out)
