"""`pgvision search`: the nearest images to a query image, as a table or an HTML contact sheet.

The table needs ``id`` and ``feature`` (a vector column filled by pgvision.embed); ``path``
and ``class`` are shown when present; ``image`` (bytea) is read for the contact sheet.
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

# pgvector's distance operators: L2, cosine distance, negative inner product.
METRICS = {"l2": "<->", "cosine": "<=>", "ip": "<#>"}


def search(conn, table, image, k=10, metric="l2", where=None, model=None):
    """The k rows nearest to ``image`` (bytes): dicts with id, path, class, distance."""
    db.require_pgvision(conn)
    oid = db.table_oid(conn, table)
    if oid is None:
        raise UserError(f"table {table} does not exist")
    cols = db.columns(conn, oid)
    missing = [c for c in ("id", "feature") if c not in cols]
    if missing:
        raise UserError(f"table {table} has no column(s) {', '.join(missing)}: search needs id and feature")
    model = db.pick_model(conn, oid, model)
    optional = {c: sql.Identifier(c) if c in cols else sql.SQL("NULL::text") for c in ("path", "class")}
    cond = sql.SQL("feature IS NOT NULL")
    if where:
        # The user's own SQL, on the user's own connection; % is not a placeholder here.
        cond = sql.SQL("{} AND ({})").format(cond, sql.SQL(where.replace("%", "%%")))
    # embed() in FROM runs once whatever the plan; inside ORDER BY a generic plan that
    # skips the index would run the model for every row
    dist = sql.SQL("feature {op} pgvision_query.q").format(op=sql.SQL(METRICS[metric]))
    query = sql.SQL(
        "SELECT id, {path} AS path, {cls} AS class, {dist} AS distance"
        " FROM {t}, pgvision.embed(%(image)s, %(model)s) AS pgvision_query (q)"
        " WHERE {cond} ORDER BY {dist} LIMIT %(k)s").format(
            path=optional["path"], cls=optional["class"], dist=dist, t=db.table_ident(table), cond=cond)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, {"image": image, "model": model, "k": k}).fetchall()
    conn.commit()
    return rows


def images_of(conn, table, ids):
    """{id: image bytes} of the given rows."""
    rows = conn.execute(sql.SQL("SELECT id, image FROM {t} WHERE id = ANY(%s)").format(
        t=db.table_ident(table)), [list(ids)]).fetchall()
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
    """A base64 JPEG thumbnail of image bytes, or None when they do not decode."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            img.seek(0)
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                canvas.alpha_composite(rgba)
                img = canvas
            img = img.convert("RGB")
            if max(img.size) < size:  # tiny images (28x28) scaled up, crisp
                scale = size // max(img.size)
                img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
    except Exception:
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(thumb, lines):
    e = html.escape
    img = (f'<img src="data:image/jpeg;base64,{thumb}" alt="{e(lines[0])}">' if thumb
           else '<div class="missing">no image</div>')
    text = "".join(f"<div>{e(x)}</div>" for x in lines if x)
    return f'<figure>{img}<figcaption>{text}</figcaption></figure>'


def contact_sheet(sections, title="pgvision search"):
    """A self-contained HTML page; each section is (heading, query name, query bytes, rows, images)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}section{margin-bottom:2em}"
        ".row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}"
        "figure{margin:0;width:170px;font-size:12px;text-align:center;overflow-wrap:anywhere}"
        "figure img{max-width:160px;max-height:160px;border:1px solid #ccc}"
        "figure.query img{border:3px solid #c33}.missing{width:160px;height:60px;background:#eee}"
        "</style></head><body>", f"<h1>{e(title)}</h1>"]
    for heading, query_name, query_bytes, rows, images in sections:
        parts.append(f"<section><h2>{e(heading)}</h2><div class=\"row\">")
        parts.append(_cell(thumbnail(query_bytes), ["query", query_name]).replace("<figure>", '<figure class="query">', 1))
        for n, r in enumerate(rows, 1):
            name = r["path"].rsplit("/", 1)[-1] if r["path"] else f"id {r['id']}"
            parts.append(_cell(thumbnail(images.get(r["id"])),
                               [f"{n}. {name}", r["class"] or "", f"distance {r['distance']:.4f}"]))
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts)
