"""`pgvision demo`: pgvision end to end on a throwaway server.

Start a server in a folder (pgvision_client.server), CREATE EXTENSION, load a sample of
Fashion-MNIST and Debian's darknet photos with `load`, embed them with
pgvision.embed_table, index them with pgvision.create_index, search with pgvision.search,
measure precision@10 on Fashion-MNIST test images, write an HTML contact sheet, and stop
the server whatever happens; with --serve, `pgvision serve` over the table first, until ctrl-c.
"""

import collections
import csv
import os
import pathlib
import signal
import sys
import time

import psycopg
from PIL import Image, ImageOps

from . import db, load, search
from .datasets import DARKNET, FASHION, FASHION_CLASSES, Fashion
from .db import UserError
from .server import Server

# What scripts/demo.sh leaves in the default folder, which the demo may replace.
SQL_DEMO = {"data", "server.log"}
DEFAULT_DIR = "/var/tmp/pgvision-demo"
TABLE = "images"


def say(text=""):
    print(text, flush=True)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def run(args):
    folder = pathlib.Path(os.path.abspath(args.dir))
    for need in (FASHION / "train-images-idx3-ubyte.gz", DARKNET / "dog.jpg"):
        if not need.exists():
            raise UserError(f"{need} is missing: apt-get install dataset-fashion-mnist darknet")
    server = Server(folder, args.port, leftovers=SQL_DEMO if str(folder) == DEFAULT_DIR else ())
    server.prepare()
    old = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    start = time.monotonic()
    try:
        t = time.monotonic()
        server.start()
        say(f"pgvision demo: server in {folder}, unix socket port {args.port} ({time.monotonic() - t:.1f} s)")
        say(f"  connect with: psql \"{server.conninfo}\" (while the demo runs)")
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgvision CASCADE")
        with db.connect(server.conninfo) as conn:
            _demo(conn, folder, args)
        if getattr(args, "serve", False):
            from . import web
            say(f"\nserving table {TABLE} of the demo (ctrl-c stops it and the server):")
            web.serve(server.conninfo, [TABLE], "127.0.0.1", args.serve_port)
    finally:
        server.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
        say(f"server stopped; total {time.monotonic() - start:.1f} s")
    return 0


def _write_sample(folder, sample):
    """PNGs of the Fashion-MNIST sample and a CSV of them plus the darknet photos."""
    train = Fashion("train")
    images = folder / "images"
    rows = []
    for i in train.balanced(-(-sample // len(FASHION_CLASSES)), sample):
        cls = train.label(i)
        path = images / "fashion-mnist" / cls.replace(" ", "-") / f"train-{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(train.png(i))
        rows.append((str(path.relative_to(folder)), cls))
    for photo in sorted(DARKNET.glob("*.jpg")):
        rows.append((str(photo), photo.stem))
    listing = folder / "sample.csv"
    with open(listing, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "class"])
        w.writerows(rows)
    return listing


def _show(conn, heading, name, data, sections):
    rows = search.search(conn, TABLE, data, k=10)
    say(f"\n{heading}: {name}")
    say(search.format_table(rows))
    sections.append((heading, name, data, rows, search.images_of(conn, TABLE, [r["id"] for r in rows])))


def _demo(conn, folder, args):
    t = time.monotonic()
    listing = _write_sample(folder, args.sample)
    items = list(load.items_from_csv(listing))
    say(f"\nsample: {len(items)} images listed in {listing} ({time.monotonic() - t:.1f} s)")

    t = time.monotonic()
    load.ensure_table(conn, TABLE, None)
    result = load.Result()
    load.copy_files(conn, TABLE, items, args.batch, result)
    say(f"load: {result.loaded} files copied into table {TABLE} ({time.monotonic() - t:.1f} s)")
    t = time.monotonic()
    load.embed_table(conn, TABLE, db.default_model(conn), args.batch, result)
    took = time.monotonic() - t
    say(f"embed: {result.embedded} features computed in the database ({took:.1f} s,"
        f" {result.embedded / max(took, 1e-9):.1f} images/s)")
    if result.problems:
        load.print_report(result, sys.stdout)

    t = time.monotonic()
    index = conn.execute("SELECT pgvision.create_index(%s::regclass, 'feature')", [TABLE]).fetchone()[0]
    conn.execute(f"ANALYZE {TABLE}")
    conn.commit()
    say(f"index: {index} by pgvision.create_index ({time.monotonic() - t:.1f} s)")

    queries = folder / "images" / "queries"
    queries.mkdir(parents=True, exist_ok=True)
    sections = []
    # A darknet photo the table does not hold as such: the dog, mirrored and cropped.
    dog = ImageOps.mirror(Image.open(DARKNET / "dog.jpg").convert("RGB"))
    w, h = dog.size
    dog = dog.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    path = queries / "dog-mirrored-cropped.jpg"
    dog.save(path, quality=90)
    _show(conn, "search: a darknet photo, mirrored and cropped", path.name, path.read_bytes(), sections)

    test = Fashion("test")
    for i in (0, 2):
        cls = test.label(i)
        path = queries / f"test-{i:05d}-{cls.replace(' ', '-')}.png"
        path.write_bytes(test.png(i))
        _show(conn, f"search: a Fashion-MNIST test image ({cls})", path.name, path.read_bytes(), sections)

    t = time.monotonic()
    hits, counts = collections.Counter(), collections.Counter()
    for i in test.balanced(args.queries):
        cls = test.label(i)
        data = test.png(i)
        rows = search.search(conn, TABLE, data, k=10)
        hits[cls] += sum(r["class"] == cls for r in rows)
        counts[cls] += 10
    n = sum(counts.values()) // 10
    say(f"\nprecision@10 by class, {n} Fashion-MNIST test images as queries"
        f" ({time.monotonic() - t:.1f} s, {n / max(time.monotonic() - t, 1e-9):.1f} searches/s):")
    width = max(len(c) for c in FASHION_CLASSES)
    for cls in FASHION_CLASSES:
        if counts[cls]:
            say(f"  {cls:<{width}}  {hits[cls] / counts[cls]:.3f}")
    say(f"  {'all':<{width}}  {sum(hits.values()) / max(sum(counts.values()), 1):.3f}")

    sheet = folder / "contact-sheet.html"
    sheet.write_text(search.contact_sheet(sections, "pgvision demo"), encoding="utf-8")
    say(f"\ncontact sheet: {sheet}")

