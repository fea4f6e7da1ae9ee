"""`pgvision serve`: a search page over tables of images, and image URLs BI tools can show.

Pages: ``/`` the search form (an image file, k, an optional ``column = value`` filter),
``POST /search`` the nearest rows to the uploaded image (pgvision.search), ``/like/T/KEY``
the nearest rows to a stored row (pgvision.search_like), ``/duplicates/T`` the groups of
copies and look-alikes in a table (pgvision.find_duplicates), ``/image/T/KEY?size=N`` a
row's image as a JPEG thumbnail (pgvision.thumbnail), for <img> tags and BI tools.

What it runs: the catalog look-ups of the served tables at start, then only
pgvision.search, pgvision.search_like, pgvision.find_duplicates (within DUPLICATES_TIMEOUT)
and pgvision.thumbnail on a row found by its primary
key, as the connecting role: SELECT on the table is all that role needs. Table names and
keys arrive as query parameters (or identifiers from the catalog), never pasted into SQL;
the filter's column must be one of the table's and its value is a parameter, quoted by
pg_catalog.format in the server. A PostgreSQL error becomes a page with its message and
hint (a bad file, an unknown key); uploads are bounded (MAX_UPLOAD).
"""

import logging
import signal
import sys
from dataclasses import dataclass, field

import psycopg
from flask import Flask, Response, render_template, request, url_for
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .. import db
from ..db import UserError

MAX_UPLOAD = 20 * 1024 * 1024    # bytes of one upload request
DEFAULT_K, MAX_K = 12, 100
GRID_SIZE = 160                  # pixels of the thumbnails on the pages
DEFAULT_SIZE, MAX_SIZE = 128, 1024  # ?size= of /image (pgvision.thumbnail's default is 128)
# find_duplicates reads the whole table (two index scans a row): a page waits this long at most
DUPLICATES_TIMEOUT = "60s"
# Columns a filter may not name: their values are not something to type into a form.
UNFILTERABLE = {"bytea", "vector", "halfvec", "sparsevec"}

log = logging.getLogger("pgvision.serve")


class Problem(Exception):
    """A page with a message and an HTTP status instead of the page asked for."""

    def __init__(self, status, message, hint=None):
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


@dataclass
class Table:
    """A served table, as the catalog described it at start."""
    name: str                 # as given on the command line and in URLs
    oid: int
    ident: sql.Composable     # schema-qualified identifier
    key: str                  # the single-column primary key
    key_type: str             # its type, format_type's spelling
    columns: dict = field(default_factory=dict)   # name: type
    filterable: list = field(default_factory=list)


def describe(conn, name, feature_column, image_column):
    """The Table of ``name``, or a UserError saying what keeps it from being served."""
    row = conn.execute(
        "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class AS c"
        " JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE c.oid = pg_catalog.to_regclass(%s)", [name]).fetchone()
    if row is None:
        raise UserError(f"table {name} does not exist (or is not visible to this role)")
    oid, schema, relname = row
    if not conn.execute("SELECT pg_catalog.has_table_privilege(%s::oid, 'SELECT')", [oid]).fetchone()[0]:
        raise UserError(f"this role may not read table {name}: GRANT SELECT ON {name} TO {conn.info.user}")
    cols = dict(conn.execute(
        "SELECT attname, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute"
        " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [oid]).fetchall())
    for col, what in ((feature_column, "--feature-column"), (image_column, "--image-column")):
        if col not in cols:
            raise UserError(f"table {name} has no column {col} ({what}; columns: {', '.join(cols)})")
    if cols[image_column] != "bytea":
        raise UserError(f"column {image_column} of table {name} is {cols[image_column]}, not bytea")
    keys = conn.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)"
        " FROM pg_catalog.pg_index AS i JOIN pg_catalog.pg_attribute AS a"
        "   ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
        " WHERE i.indrelid = %s AND i.indisprimary", [oid]).fetchall()
    if len(keys) != 1:
        raise UserError(f"table {name} needs a primary key of one column (it has {len(keys) or 'none'}):"
                        " rows are found and linked by it")
    filterable = [c for c, t in cols.items() if t.split("(")[0] not in UNFILTERABLE
                  and not t.endswith("]") and c != feature_column]
    return Table(name, oid, sql.Identifier(schema, relname), keys[0][0], keys[0][1], cols, filterable)


def _status(sqlstate):
    """The HTTP status of a PostgreSQL error: the caller's data, a missing row, a privilege, load."""
    sqlstate = sqlstate or ""
    if sqlstate == "P0002":
        return 404
    if sqlstate == "42501":
        return 403
    if sqlstate.startswith(("22", "23")) or sqlstate in ("42703", "42601", "42804"):
        return 400
    if sqlstate.startswith(("53", "57", "08")):
        return 503
    return 500


def create_app(dsn, tables, feature_column="feature", image_column="image", pool_size=4):
    """The Flask application serving ``tables`` (names) through a pool of connections of
    ``dsn``; raises UserError when a table cannot be served."""
    with db.connect(dsn) as conn:
        db.require_pgvision(conn)
        served = {name: describe(conn, name, feature_column, image_column) for name in tables}
        conn.rollback()
    pool = ConnectionPool(dsn or "", min_size=1, max_size=pool_size, open=False, timeout=30,
                          kwargs={"autocommit": True, "application_name": "pgvision serve"})
    pool.open()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD
    app.extensions["pgvision_pool"] = pool
    default = tables[0]

    def table_of(name):
        if name not in served:
            raise Problem(404, f"table {name} is not served here",
                          f"served: {', '.join(served)} (pgvision serve --table)")
        return served[name]

    def options(args, t):
        """k and the filter from a form or a query string, checked."""
        try:
            k = int(args.get("k") or DEFAULT_K)
        except ValueError:
            raise Problem(400, f"k must be a whole number, not {args.get('k')!r}") from None
        if not 1 <= k <= MAX_K:
            raise Problem(400, f"k must be between 1 and {MAX_K}, not {k}")
        column, value = args.get("column") or "", args.get("value") or ""
        if column and column not in t.filterable:
            raise Problem(400, f"table {t.name} has no column {column} to filter on",
                          f"columns: {', '.join(t.filterable)}")
        if not value:
            column = ""
        return {"k": k, "column": column, "value": value if column else ""}

    def run_search(t, opts, image=None, key=None):
        """pgvision.search (image) or pgvision.search_like (key): rank, id, distance, item."""
        # The filter is SQL text for pgvision.search: built in the server from the column
        # (checked against the table's) and the value, both parameters.
        filt = (sql.SQL("pg_catalog.format('%%I = %%L', %(column)s::text, %(value)s::text)")
                if opts["column"] else sql.SQL("NULL::text"))
        if image is not None:
            call = sql.SQL("pgvision.search(%(t)s::oid::regclass, %(image)s::bytea, k => %(k)s::int,"
                           " feature_column => %(fc)s::name, filter => {f})").format(f=filt)
        else:
            call = sql.SQL("pgvision.search_like(%(t)s::oid::regclass, %(key)s::text, k => %(k)s::int,"
                           " feature_column => %(fc)s::name, filter => {f})").format(f=filt)
        query = sql.SQL("SELECT s.rank, s.id, s.distance, s.item FROM {call} AS s ORDER BY s.rank").format(call=call)
        params = {"t": t.oid, "image": image, "key": key, "k": opts["k"], "fc": feature_column,
                  "column": opts["column"], "value": opts["value"]}
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, params).fetchall()

    def thumbnail_of(t, key, size):
        query = sql.SQL("SELECT true, pgvision.thumbnail(t.{img}, %s::int, 'jpeg') FROM {tbl} AS t"
                        " WHERE t.{key} = CAST(%s::text AS {type})").format(
            img=sql.Identifier(image_column), tbl=t.ident, key=sql.Identifier(t.key),
            type=sql.SQL(t.key_type))
        with pool.connection() as conn:
            row = conn.execute(query, [size, key]).fetchone()
        if row is None:
            raise Problem(404, f"table {t.name} has no row with {t.key} = {key}")
        if row[1] is None:
            raise Problem(404, f"row {key} of table {t.name} has no image")
        return bytes(row[1])

    def page(t, opts, **kw):
        return render_template("search.html", table=t, tables=list(served), opts=opts,
                               max_k=MAX_K, max_upload_mb=MAX_UPLOAD // (1024 * 1024),
                               grid_size=GRID_SIZE, **kw)

    @app.get("/")
    def index():
        t = table_of(request.args.get("table") or default)
        return page(t, options(request.args, t))

    @app.post("/search")
    def search():
        t = table_of(request.form.get("table") or default)
        opts = options(request.form, t)
        upload = request.files.get("image")
        data = upload.read() if upload else b""
        if not data:
            raise Problem(400, "choose an image file to search with")
        rows = run_search(t, opts, image=data)
        try:
            with pool.connection() as conn:
                thumb = conn.execute("SELECT pg_catalog.encode(pgvision.thumbnail(%s::bytea, %s::int, 'jpeg'), 'base64')",
                                     [data, GRID_SIZE]).fetchone()[0]
            query_src = "data:image/jpeg;base64," + thumb.replace("\n", "")
        except psycopg.Error:
            query_src = None
        return page(t, opts, rows=results(rows), query_name=upload.filename or "upload", query_src=query_src)

    @app.get("/like/<table>/<path:key>")
    def like(table, key):
        t = table_of(table)
        opts = options(request.args, t)
        rows = run_search(t, opts, key=key)
        return page(t, opts, rows=results(rows), query_name=f"{t.key} {key}", query_key=key,
                    query_src=url_for("image", table=t.name, key=key, size=GRID_SIZE))

    @app.get("/duplicates/<table>")
    def duplicates(table):
        t = table_of(table)
        try:
            near_bits = int(request.args.get("near_bits") or 8)
            similar = float(request.args.get("similar_distance") or 0.05)
        except ValueError:
            raise Problem(400, "near_bits must be a whole number and similar_distance a number") from None
        with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)", [DUPLICATES_TIMEOUT])
            rows = cur.execute(
                "SELECT d.group_no, d.id, d.verdict, d.distance FROM pgvision.find_duplicates("
                "%s::oid::regclass, feature_column => %s::name, image_column => %s::name,"
                " near_bits => %s::int, similar_distance => %s::float8) AS d",
                [t.oid, feature_column, image_column, near_bits, similar]).fetchall()
        groups = {}
        for g, key, verdict, distance in rows:
            groups.setdefault(g, []).append({"id": key, "verdict": verdict, "distance": distance})
        return render_template("duplicates.html", table=t, tables=list(served), groups=groups,
                               near_bits=near_bits, similar_distance=similar, grid_size=GRID_SIZE)

    @app.get("/image/<table>/<path:key>")
    def image(table, key):
        t = table_of(table)
        try:
            size = int(request.args.get("size") or DEFAULT_SIZE)
        except ValueError:
            raise Problem(400, f"size must be a whole number, not {request.args.get('size')!r}") from None
        if not 1 <= size <= MAX_SIZE:
            raise Problem(400, f"size must be between 1 and {MAX_SIZE}, not {size}")
        resp = Response(thumbnail_of(t, key, size), mimetype="image/jpeg")
        resp.headers["Cache-Control"] = "max-age=300"
        return resp

    def message(status, text, hint=None):
        return render_template("message.html", status=status, message=text, hint=hint), status

    @app.errorhandler(Problem)
    def on_problem(e):
        return message(e.status, e.message, e.hint)

    @app.errorhandler(psycopg.Error)
    def on_database_error(e):
        diag = e.diag
        text = diag.message_primary or str(e).strip() or type(e).__name__
        hint = " ".join(filter(None, [diag.message_detail, diag.message_hint])) or None
        status = _status(diag.sqlstate)
        if status >= 500:
            log.error("%s: %s", diag.sqlstate or type(e).__name__, text)
        return message(status, text, hint)

    @app.errorhandler(PoolTimeout)
    def on_pool_timeout(e):
        return message(503, "the database did not answer in time", str(e))

    @app.errorhandler(RequestEntityTooLarge)
    def on_too_large(e):
        return message(413, f"the upload is larger than {MAX_UPLOAD // (1024 * 1024)} MB",
                       "choose a smaller image file")

    @app.errorhandler(HTTPException)
    def on_http(e):
        return message(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def on_other(e):
        log.exception("error serving %s", request.path)
        return message(500, "internal error", "the server's log has the details")

    return app


def results(rows):
    """Search rows with a caption: the file name of a path column, a class, else the key."""
    out = []
    for r in rows:
        item = r["item"] or {}
        name = next((str(item[c]) for c in ("path", "file", "filename", "name", "title") if item.get(c)), None)
        name = name.rsplit("/", 1)[-1] if name else None
        label = next((str(item[c]) for c in ("class", "label", "category") if item.get(c) is not None), None)
        detail = ", ".join(f"{k}: {v}" for k, v in item.items())
        out.append({**r, "name": name, "label": label, "detail": detail})
    return out


def _stop(signum, frame):
    raise KeyboardInterrupt


def serve(dsn, tables, host="127.0.0.1", port=8000, feature_column="feature", image_column="image",
          threads=4, out=sys.stdout):
    """Serve ``tables`` until ctrl-c (or SIGTERM); prints where it listens. Returns 0."""
    from waitress import create_server

    app = create_app(dsn, tables, feature_column, image_column, pool_size=threads)
    pool = app.extensions["pgvision_pool"]
    try:
        # waitress reads a request's body before the application sees it; beyond twice the
        # upload limit it answers 413 itself, below that the application's page says why
        server = create_server(app, host=host, port=port, threads=threads,
                               max_request_body_size=2 * MAX_UPLOAD, ident="pgvision")
    except OSError as e:
        pool.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    listen = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    urls = [f"http://[{h}]:{p}/" if ":" in str(h) else f"http://{h}:{p}/" for h, p in listen]
    print(f"pgvision serve: listening on {' '.join(urls)} (tables: {', '.join(tables)}); ctrl-c stops",
          file=out, flush=True)
    old = signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        server.close()
        pool.close()
    print("pgvision serve: stopped", file=out, flush=True)
    return 0
