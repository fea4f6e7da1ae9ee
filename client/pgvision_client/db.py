"""Connections, table names and the facts the commands read from the database."""

import psycopg
from psycopg import sql

DEFAULT_MODEL = "efficientnet_lite0"
# Where `load` records the model of a table's features: a comment on the feature column.
MODEL_COMMENT = "pgvision model: "


class UserError(Exception):
    """A problem the user can fix (bad arguments, wrong table layout): no traceback."""


def connect(dsn):
    """Connect with ``dsn``; libpq fills in the rest from PGHOST, PGPORT, PGUSER, ..."""
    from pgvector.psycopg import register_vector

    try:
        conn = psycopg.connect(dsn or "")
    except psycopg.OperationalError as e:
        raise UserError(f"could not connect: {str(e).strip()}") from None
    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        conn.close()
        raise UserError("the database has no vector type: CREATE EXTENSION pgvision CASCADE") from None
    return conn


def table_ident(name):
    """``images`` or ``schema.images`` as a quoted identifier."""
    parts = name.split(".")
    if len(parts) > 2 or not all(parts):
        raise UserError(f"invalid table name {name!r}: expected TABLE or SCHEMA.TABLE")
    return sql.Identifier(*parts)


def table_oid(conn, name):
    """The table's oid, or None when it does not exist."""
    ident = table_ident(name).as_string(conn)
    return conn.execute("SELECT to_regclass(%s)::oid", [ident]).fetchone()[0]


def columns(conn, oid):
    """{column name: type as SQL} of a table."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", [oid]).fetchall()
    return dict(rows)


def require_pgvision(conn):
    if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pgvision'").fetchone():
        raise UserError("pgvision is not installed in this database: CREATE EXTENSION pgvision CASCADE")


def model_dim(conn, model):
    row = conn.execute("SELECT dim FROM pgvision.models WHERE name = %s", [model]).fetchone()
    if row is None:
        names = [r[0] for r in conn.execute("SELECT name FROM pgvision.models ORDER BY name")]
        raise UserError(f"model {model!r} is not registered (registered: {', '.join(names) or 'none'})")
    return row[0]


def table_model(conn, oid):
    """The model named in the comment on the feature column, or None."""
    row = conn.execute(
        "SELECT col_description(%s, attnum) FROM pg_attribute"
        " WHERE attrelid = %s AND attname = 'feature'", [oid, oid]).fetchone()
    if row and row[0] and row[0].startswith(MODEL_COMMENT):
        return row[0][len(MODEL_COMMENT):].strip()
    return None


def pick_model(conn, oid, requested):
    """The model to embed with: --model, else the table's, else the default; they must agree."""
    recorded = table_model(conn, oid) if oid else None
    if requested and recorded and requested != recorded:
        raise UserError(f"the features of this table are from model {recorded!r}, not {requested!r}")
    return requested or recorded or default_model(conn)


def default_model(conn):
    """The server's default model: pgvision.default_model(), which a server older than 0.3.0
    does not have; its default is efficientnet_lite0."""
    if conn.execute("SELECT to_regprocedure('pgvision.default_model()') IS NOT NULL").fetchone()[0]:
        return conn.execute("SELECT pgvision.default_model()").fetchone()[0]
    return DEFAULT_MODEL
