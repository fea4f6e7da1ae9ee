"""`pgvision demo`: pgvision end to end on a throwaway server.

initdb into a folder, start the server on a unix socket there, CREATE EXTENSION, load a
sample of Fashion-MNIST and Debian's darknet photos with `load`, embed them in the
database, build the HNSW index, search, measure precision@10 on Fashion-MNIST test images,
write an HTML contact sheet, and stop the server whatever happens.
"""

import collections
import csv
import gzip
import io
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import psycopg
from PIL import Image, ImageOps

from . import db, load, search
from .db import UserError

FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot"]
DARKNET = pathlib.Path("/usr/share/darknet/data")
MARKER = ".pgvision-demo"
SQL_DEMO = {"data", "server.log"}
DEFAULT_DIR = "/var/tmp/pgvision-demo"
TABLE = "images"


def say(text=""):
    print(text, flush=True)


class Fashion:
    """One split of Fashion-MNIST read from Debian's idx files (no numpy needed)."""

    def __init__(self, split):
        prefix = "train" if split == "train" else "t10k"
        with gzip.open(FASHION / f"{prefix}-images-idx3-ubyte.gz") as f:
            self.raw = f.read()
        with gzip.open(FASHION / f"{prefix}-labels-idx1-ubyte.gz") as f:
            self.labels = f.read()[8:]
        self.rows = int.from_bytes(self.raw[8:12], "big")
        self.cols = int.from_bytes(self.raw[12:16], "big")

    def image(self, i):
        size = self.rows * self.cols
        return Image.frombytes("L", (self.cols, self.rows), self.raw[16 + i * size:16 + (i + 1) * size])

    def balanced(self, total=None, per_class=None):
        """Indexes of the first images of each class: ``per_class`` each, or ``total`` in all."""
        quota = per_class or -(-total // len(FASHION_CLASSES))
        total = total or quota * len(FASHION_CLASSES)
        taken, out = collections.Counter(), []
        for i, label in enumerate(self.labels):
            if taken[label] < quota:
                taken[label] += 1
                out.append(i)
                if len(out) == total:
                    break
        return out


class Server:
    """A throwaway cluster in ``folder``, run as postgres when we are root."""

    def __init__(self, folder, port):
        self.folder = folder
        self.data = folder / "data"
        self.port = port
        pg_config = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise UserError(f"cannot run {pg_config} --bindir ({e}): install PostgreSQL or set PG_CONFIG") from None
        self.bindir = pathlib.Path(out.stdout.strip())
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.conninfo = f"host={folder} port={port} user=postgres dbname=postgres"

    def run(self, tool, *args):
        cmd = self.as_pg + [str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise UserError(f"{tool} failed: {(done.stderr or done.stdout).strip()}")
        return done

    def prepare(self):
        """An empty folder of ours: refuse to wipe a folder the demo did not make."""
        f = self.folder
        # Ours: marked, or what scripts/demo.sh leaves in the default folder (data/, server.log).
        leftover = str(f) == DEFAULT_DIR and {p.name for p in f.iterdir()} <= SQL_DEMO if f.exists() else False
        if f.exists() and any(f.iterdir()) and not (f / MARKER).exists() and not leftover:
            raise UserError(f"{f} is not empty and not a pgvision demo folder: choose another --dir")
        if (self.data / "postmaster.pid").exists() and self.running():
            raise UserError(f"a server is running in {self.data} (another demo?): stop it with"
                            f" pg_ctl -D {self.data} stop, or choose another --dir")
        if f.exists():
            shutil.rmtree(f)
        f.mkdir(parents=True, mode=0o755)
        (f / MARKER).write_text("a throwaway folder of `pgvision demo`, replaced by its next run\n")
        if self.as_pg:
            shutil.chown(f, "postgres", "postgres")
            probe = subprocess.run(self.as_pg + ["test", "-w", str(f)], stdin=subprocess.DEVNULL)
            if probe.returncode != 0:
                raise UserError(f"the postgres user cannot write to {f} (a parent folder is closed to"
                                " others?): choose a --dir postgres can reach, e.g. under /var/tmp")

    def start(self):
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {shlex.quote(str(self.folder))} -c listen_addresses=''"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        log = self.folder / "server.log"
        try:
            self.run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "120", "-o", options, "start")
        except UserError as e:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
            raise UserError("\n".join([str(e), *tail])) from None

    def running(self):
        status = subprocess.run(self.as_pg + [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
                                capture_output=True, stdin=subprocess.DEVNULL)
        return status.returncode == 0

    def stop(self):
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self.as_pg + [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                         "stop"], capture_output=True, stdin=subprocess.DEVNULL)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def run(args):
    folder = pathlib.Path(os.path.abspath(args.dir))
    for need in (FASHION / "train-images-idx3-ubyte.gz", DARKNET / "dog.jpg"):
        if not need.exists():
            raise UserError(f"{need} is missing: apt-get install dataset-fashion-mnist darknet")
    server = Server(folder, args.port)
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
    for i in train.balanced(total=sample):
        cls = FASHION_CLASSES[train.labels[i]]
        path = images / "fashion-mnist" / cls.replace(" ", "-") / f"train-{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        train.image(i).save(path)
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
    load.embed_missing(conn, TABLE, db.DEFAULT_MODEL, args.batch, result)
    took = time.monotonic() - t
    say(f"embed: {result.embedded} features computed in the database ({took:.1f} s,"
        f" {result.embedded / max(took, 1e-9):.1f} images/s)")
    if result.problems:
        load.print_report(result, sys.stdout)

    t = time.monotonic()
    conn.execute(f"CREATE INDEX {TABLE}_feature_idx ON {TABLE} USING hnsw (feature vector_l2_ops)")
    conn.execute(f"ANALYZE {TABLE}")
    conn.commit()
    say(f"index: HNSW on feature ({time.monotonic() - t:.1f} s)")

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
        cls = FASHION_CLASSES[test.labels[i]]
        path = queries / f"test-{i:05d}-{cls.replace(' ', '-')}.png"
        test.image(i).save(path)
        _show(conn, f"search: a Fashion-MNIST test image ({cls})", path.name, path.read_bytes(), sections)

    t = time.monotonic()
    hits, counts = collections.Counter(), collections.Counter()
    for i in test.balanced(per_class=args.queries):
        cls = FASHION_CLASSES[test.labels[i]]
        data = _png(test.image(i))
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


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
