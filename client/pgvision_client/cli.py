"""The `pgvision` command: load, search, duplicates, serve, demo."""

import argparse
import pathlib
import sys

import psycopg

from . import __version__, db
from .db import UserError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

CONNECTION_HELP = """\
connection: libpq's environment variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD,
PGSERVICE, ...) and ~/.pgpass, or --dsn "host=... dbname=..." / "postgresql://...";
--dsn settings override the environment's."""

LOAD_EPILOG = f"""\
Input: a folder (every file below it, hidden ones excepted; --class-from parent-dir takes
the class from the file's folder) or a CSV file with rows path[,class] (an optional header
row "path,class"; paths relative to the CSV's folder).

The table is created when missing: id bigint identity primary key, path text unique,
sha256 text, class text, image bytea, feature vector(the model's dimension). Paths are
stored absolute. A re-run loads only what is new: files whose path is in the table are not
read, files whose content (sha256) is there under another path are skipped as duplicates.
Files that cannot be read, are not images pgvision decodes (checked with Pillow), or whose
embedding fails in the server are reported at the end (and in --report FILE) and do not
stop the run. Embedding (unless --no-embed) is CALL pgvision.embed_table: it fills every
NULL feature of the table, so a row whose image the server refuses keeps a NULL feature
and is reported again next run.

exit status: 0 every file is loaded (or was already) and embedded; duplicates do not count
as problems. 3 the run finished but some files were reported; all others were loaded.
1 an error stopped the run (connection, SQL, table layout); batches committed before it
stay loaded, and a re-run resumes. 2 invalid arguments.

{CONNECTION_HELP}"""

SEARCH_EPILOG = f"""\
The search is pgvision.search. The table needs the columns id (its primary key) and
feature (filled by pgvision.embed with the same model); path and class are shown when
present; image (bytea) is read for --html. Tables created by `pgvision load` have them all.
Distances: l2 (<->), cosine distance (<=>), ip: negative inner product (<#>); smaller is
nearer for all three; without --metric, the one the feature column's index was built for
(pgvision.create_index). --where is SQL on the table's columns, pgvision.search's filter:
it runs with search_path pg_catalog, so qualify your own functions.

exit status: 0 results printed (possibly none), 1 an error, 2 invalid arguments.

{CONNECTION_HELP}"""

DUPLICATES_EPILOG = f"""\
The groups are pgvision.find_duplicates: rows with the same bytes or pixels (exact), the
same picture re-encoded or resized (near: perceptual hash distance at most --near-bits,
which needs a bit(64) column phash, e.g. ALTER TABLE T ADD COLUMN phash bit(64) GENERATED
ALWAYS AS (pgvision.phash(image)) STORED, with an hnsw bit_hamming_ops index), and
look-alikes (similar: cosine distance of the features at most --similar-distance). The
table needs a primary key and the feature column; tables made by `pgvision load` have them.
--html writes a contact sheet of the groups (the image column is read for it).

exit status: 0 groups printed (possibly none), 1 an error, 2 invalid arguments.

{CONNECTION_HELP}"""

SERVE_EPILOG = f"""\
Pages: / the search form (an image file, k, an optional filter column = value), its results
as thumbnails with distances (pgvision.search; a click searches like that row,
pgvision.search_like), /duplicates/TABLE: the groups of pgvision.find_duplicates (within
60 seconds), and /image/TABLE/KEY?size=N: the row's image as a JPEG thumbnail of
at most N pixels (default 128; pgvision.thumbnail), for <img> tags and BI tools. KEY is the
primary key's value (the id pgvision.search returns).

Each --table needs a single-column primary key, the feature column (filled by pgvision.embed
or `pgvision load`) and the image column (bytea). The connecting role needs SELECT on the
tables and nothing else: a read-only role is enough. Uploads are limited to 20 MB. Anyone
who can reach --host:--port can search the tables: keep the default 127.0.0.1 unless that
is what you want. It prints where it listens; ctrl-c (or SIGTERM) stops it.

exit status: 0 stopped by ctrl-c or SIGTERM, 1 an error (a table it cannot serve, the port
taken), 2 invalid arguments.

{CONNECTION_HELP}"""

DEMO_EPILOG = """\
Needs no running server: it creates a throwaway cluster in --dir (with initdb and pg_ctl of
`pg_config --bindir`, PG_CONFIG defaulting to /usr/lib/postgresql/15/bin/pg_config), run as
the postgres user when started as root, listening only on a unix socket in --dir. The
pgvision extension must be installed (make install). The server is stopped at the end, also
after an error or ctrl-c; --dir stays for inspection and is replaced by the next run.
--serve keeps the server running after the demo and serves its table with `pgvision serve`
(on 127.0.0.1:--serve-port) until ctrl-c.

exit status: 0 the demo ran, 1 an error, 2 invalid arguments."""


def _positive(text):
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text}")
    return n


def _port(text):
    n = int(text)
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, not {text}")
    return n


def parser():
    p = argparse.ArgumentParser(prog="pgvision", description="Reverse image search in PostgreSQL with pgvision.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--dsn", help="libpq connection string or URI (default: the PG* environment)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    lp = sub.add_parser("load", parents=[conn], formatter_class=fmt, epilog=LOAD_EPILOG,
                        help="load image files into a table and compute their features",
                        description="Load image files into a table with binary COPY, then compute their features in the database.")
    lp.add_argument("source", metavar="DIR|CSV", help="a folder of images or a CSV file of path[,class]")
    lp.add_argument("--table", required=True, help="table name, optionally SCHEMA.TABLE")
    lp.add_argument("--model", help="model in pgvision.models (default: the table's, else the server's, pgvision.default_model())")
    lp.add_argument("--class-from", choices=["parent-dir", "none"], default="parent-dir",
                    help="class of a file in a folder input (default: parent-dir)")
    lp.add_argument("--batch", type=_positive, default=64, help="files per COPY and rows per embed_table batch (default: 64)")
    lp.add_argument("--embed", action=argparse.BooleanOptionalAction, default=True,
                    help="compute missing features after loading (default: yes)")
    lp.add_argument("--report", metavar="FILE", help="also write the report as CSV: path,status,reason")

    sp = sub.add_parser("search", parents=[conn], formatter_class=fmt, epilog=SEARCH_EPILOG,
                        help="find the images most like an image file",
                        description="Find the rows of a table whose images are most like an image file.")
    sp.add_argument("image", metavar="IMAGE", help="the query image file")
    sp.add_argument("--table", required=True, help="table name, optionally SCHEMA.TABLE")
    sp.add_argument("-k", type=_positive, default=10, help="number of results (default: 10)")
    sp.add_argument("--metric", choices=["l2", "cosine", "ip"],
                    help="distance (default: the one the feature column's index was built for)")
    sp.add_argument("--where", help="SQL condition on the table's rows, e.g. \"class = 'dog'\"")
    sp.add_argument("--model", help="model in pgvision.models (default: the table's, else the server's, pgvision.default_model())")
    sp.add_argument("--html", metavar="FILE", help="also write a self-contained HTML contact sheet")

    up = sub.add_parser("duplicates", parents=[conn], formatter_class=fmt, epilog=DUPLICATES_EPILOG,
                        help="groups of duplicate images in a table",
                        description="Find the groups of exact copies, near copies and look-alikes in a table.")
    up.add_argument("--table", required=True, help="table name, optionally SCHEMA.TABLE")
    up.add_argument("--near-bits", type=int, default=8, help="hash distance of near copies, 0-64 (default: %(default)s)")
    up.add_argument("--similar-distance", type=float, default=0.05,
                    help="cosine distance of look-alikes (default: %(default)s)")
    up.add_argument("--html", metavar="FILE", help="also write a self-contained HTML contact sheet of the groups")

    wp = sub.add_parser("serve", parents=[conn], formatter_class=fmt, epilog=SERVE_EPILOG,
                        help="serve a search page over a table of images",
                        description="Serve a web page that searches a table by an uploaded image, and the table's images as thumbnails.")
    wp.add_argument("--table", required=True, action="append",
                    help="table name, optionally SCHEMA.TABLE; repeat it to serve several (the first is the default)")
    wp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    wp.add_argument("--port", type=_port, default=8000, help="port to listen on, 0 for any free one (default: %(default)s)")
    wp.add_argument("--feature-column", default="feature", help="the tables' feature column (default: %(default)s)")
    wp.add_argument("--image-column", default="image", help="the tables' image column, bytea (default: %(default)s)")

    dp = sub.add_parser("demo", formatter_class=fmt, epilog=DEMO_EPILOG,
                        help="run pgvision end to end on a throwaway server",
                        description="Start a throwaway PostgreSQL server, load a Fashion-MNIST sample and the"
                                    " darknet photos, embed, index, search, measure precision@10, stop.")
    dp.add_argument("--dir", default="/var/tmp/pgvision-demo", help="folder for the cluster, images and outputs (default: %(default)s)")
    dp.add_argument("--port", type=_positive, default=54329, help="port number of the unix socket (default: %(default)s)")
    dp.add_argument("--sample", type=_positive, default=1000, help="Fashion-MNIST training images to load (default: %(default)s)")
    dp.add_argument("--queries", type=_positive, default=10, help="Fashion-MNIST test images per class for precision@10 (default: %(default)s)")
    dp.add_argument("--batch", type=_positive, default=64, help="files per COPY and rows per embed_table batch (default: %(default)s)")
    dp.add_argument("--serve", action="store_true", help="after the demo, serve its table with `pgvision serve` until ctrl-c")
    dp.add_argument("--serve-port", type=_port, default=8000, help="port of --serve, on 127.0.0.1 (default: %(default)s)")
    return p


def run_load(args):
    from . import load
    items = load.items_from(args.source, args.class_from)
    with db.connect(args.dsn) as conn:
        result = load.load(conn, args.table, items, args.model, args.batch, args.embed)
    load.print_report(result, sys.stdout, embed=args.embed)
    if args.report:
        load.write_report(result, args.report)
        print(f"report: {args.report}")
    return EXIT_PARTIAL if result.failures else EXIT_OK


def run_search(args):
    from . import search
    try:
        image = pathlib.Path(args.image).read_bytes()
    except OSError as e:
        raise UserError(f"{args.image}: {e.strerror or e}") from None
    with db.connect(args.dsn) as conn:
        rows = search.search(conn, args.table, image, args.k, args.metric, args.where, args.model)
        print(search.format_table(rows) if rows else "no rows")
        if args.html:
            images = search.images_of(conn, args.table, [r["id"] for r in rows])
            metric = f" ({args.metric})" if args.metric else ""
            page = search.contact_sheet([(f"nearest {len(rows)} in {args.table}{metric}",
                                          pathlib.Path(args.image).name, image, rows, images)])
            pathlib.Path(args.html).write_text(page, encoding="utf-8")
            print(f"contact sheet: {args.html}")
    return EXIT_OK


def run_duplicates(args):
    from . import duplicates
    with db.connect(args.dsn) as conn:
        rows = duplicates.find(conn, args.table, args.near_bits, args.similar_distance)
        print(duplicates.format_table(rows) if rows else "no duplicates")
        if args.html:
            pathlib.Path(args.html).write_text(duplicates.contact_sheet(conn, args.table, rows), encoding="utf-8")
            print(f"contact sheet: {args.html}")
    return EXIT_OK


def run_serve(args):
    from . import web
    return web.serve(args.dsn, args.table, args.host, args.port, args.feature_column, args.image_column)


def run_demo(args):
    from . import demo
    return demo.run(args)


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return {"load": run_load, "search": run_search, "duplicates": run_duplicates, "serve": run_serve,
                "demo": run_demo}[args.command](args)
    except UserError as e:
        print(f"pgvision: error: {e}", file=sys.stderr)
    except psycopg.Error as e:
        diag = e.diag
        msg = diag.message_primary or str(e).strip()
        print(f"pgvision: error: {msg}", file=sys.stderr)
        for label, text in (("DETAIL", diag.message_detail), ("HINT", diag.message_hint)):
            if text:
                print(f"{label}: {text}", file=sys.stderr)
    except KeyboardInterrupt:
        print("pgvision: interrupted", file=sys.stderr)
        return 130
    return EXIT_ERROR
