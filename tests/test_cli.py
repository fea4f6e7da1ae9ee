"""The `pgvision` command-line client, run as users run it: `python -m pgvision_client ...`.

Loads as the ordinary role ``app`` into the throwaway server, through --dsn or the PG*
environment variables, and runs the demo end to end with a small sample.
"""

import csv
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import psycopg
import pytest
from PIL import Image

from conftest import APP_ROLE, DBNAME, ROOT, dsn
from data import DARKNET, encode, fashion_sample, photo

pytest.importorskip("tqdm", reason="the client needs tqdm: pip install -r requirements-dev.txt")

CLIENT = ROOT / "client"
GOOD_PHOTOS = ["dog", "eagle", "giraffe"]


def cli(*args, server=None, env_dsn=None, timeout=600):
    """Run the client; ``server`` passes --dsn, ``env_dsn`` sets PG* variables instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k == "PG_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT), env.get("PYTHONPATH")]))
    if env_dsn:
        env.update(env_dsn)
    cmd = [sys.executable, "-m", "pgvision_client", *map(str, args)]
    if server is not None:
        cmd += ["--dsn", dsn(server, user=APP_ROLE)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def pg_env(server):
    return {"PGHOST": server.host, "PGPORT": str(server.port), "PGUSER": APP_ROLE, "PGDATABASE": DBNAME}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Photos and Fashion-MNIST PNGs in class folders, plus a damaged JPEG, a file of noise
    named .jpg and a text file."""
    root = tmp_path_factory.mktemp("images")
    for name in GOOD_PHOTOS:
        (root / name).mkdir()
        shutil.copy(DARKNET / f"{name}.jpg", root / name / f"{name}.jpg")
    for i, cls, png in fashion_sample(2)[:6]:
        (root / cls).mkdir(exist_ok=True)
        (root / cls / f"{i}.png").write_bytes(png)
    (root / "bad").mkdir()
    dog = photo("dog")
    (root / "bad" / "truncated.jpg").write_bytes(dog[:len(dog) // 2])
    (root / "bad" / "noise.jpg").write_bytes(bytes(range(256)) * 20)
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def loaded(server, folder, tmp_path_factory):
    """The folder loaded into table ``cli_images`` as app with --dsn: (result, report path)."""
    report = tmp_path_factory.mktemp("report") / "report.csv"
    done = cli("load", folder, "--table", "cli_images", "--batch", "4", "--report", report, server=server)
    return done, report


def rows(server, query, params=()):
    with psycopg.connect(dsn(server)) as conn:
        return conn.execute(query, params).fetchall()


def good_files(folder):
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.parent.name != "bad"
                  and p.suffix != ".txt")


def test_load_reports_bad_files_and_loads_the_rest(server, folder, loaded):
    done, report = loaded
    assert done.returncode == 3, done.stderr          # finished, some files reported
    out = done.stdout
    assert "loaded 10, already loaded 0" in out
    assert re.search(r"not an image: .*noise\.jpg: format not recognized", out)
    assert re.search(r"not an image: .*notes\.txt: format not recognized", out)
    # Pillow's cheap check passes half a JPEG; the server refuses it and the row is reported.
    assert re.search(r"embed failed: .*truncated\.jpg: .*(truncated|decode)", out)
    with open(report, newline="") as f:
        problems = {pathlib.Path(r["path"]).name: r["status"] for r in csv.DictReader(f)}
    assert problems == {"noise.jpg": "not an image", "notes.txt": "not an image",
                        "truncated.jpg": "embed failed"}

    table = dict((p, c) for p, c in rows(server, "SELECT path, class FROM cli_images"))
    assert sorted(p for p in table if "/bad/" not in p) == good_files(folder)
    assert table[str(folder / "dog" / "dog.jpg")] == "dog"
    assert rows(server, "SELECT tableowner FROM pg_tables WHERE tablename = 'cli_images'") == [(APP_ROLE,)]


def test_load_fills_features(server, loaded):
    assert rows(server, "SELECT count(*), min(vector_dims(feature)) FROM cli_images"
                        " WHERE feature IS NOT NULL") == [(9, 1280)]
    assert [p.rsplit("/", 1)[1] for (p,) in rows(server, "SELECT path FROM cli_images WHERE feature IS NULL")] \
        == ["truncated.jpg"]
    assert rows(server, "SELECT count(*) FROM cli_images WHERE sha256 !~ '^[0-9a-f]{64}$'") == [(0,)]


def test_rerun_loads_nothing_new(server, folder, loaded):
    before = rows(server, "SELECT id, path, sha256 FROM cli_images ORDER BY id")
    done = cli("load", folder, "--table", "cli_images", server=server)
    assert "loaded 0, already loaded 10" in done.stdout, done.stdout + done.stderr
    assert rows(server, "SELECT id, path, sha256 FROM cli_images ORDER BY id") == before


def test_renamed_copy_is_skipped_by_hash(server, tmp_path):
    for d in ("first", "second"):
        (tmp_path / d).mkdir()
    shutil.copy(DARKNET / "dog.jpg", tmp_path / "first" / "dog.jpg")
    assert cli("load", tmp_path / "first", "--table", "cli_dups", server=server).returncode == 0
    shutil.copy(DARKNET / "dog.jpg", tmp_path / "second" / "same-dog.jpg")
    shutil.copy(DARKNET / "kite.jpg", tmp_path / "second" / "kite.jpg")
    done = cli("load", tmp_path / "second", "--table", "cli_dups", server=server)
    assert done.returncode == 0, done.stdout + done.stderr    # a duplicate is not a problem
    assert "loaded 1, already loaded 0, duplicates skipped 1, embedded 1, problems 0" in done.stdout
    assert f"duplicate: {tmp_path}/second/same-dog.jpg: same content as {tmp_path}/first/dog.jpg" in done.stdout
    assert sorted(r[0].rsplit("/", 1)[1] for r in rows(server, "SELECT path FROM cli_dups")) == ["dog.jpg", "kite.jpg"]


def test_embedding_retries_rows_left_without_a_feature(server, loaded, tmp_path):
    """Every run embeds the table's NULL features, so a damaged file stays reported."""
    done = cli("load", tmp_path, "--table", "cli_images", server=server)
    assert done.returncode == 3
    assert "loaded 0, already loaded 0, embedded 0, problems 1" in done.stdout
    assert re.search(r"embed failed: .*truncated\.jpg", done.stdout)


def test_search_returns_the_query_first_and_writes_html(server, folder, loaded, tmp_path):
    html = tmp_path / "sheet.html"
    query = folder / "dog" / "dog.jpg"
    done = cli("search", query, "--table", "cli_images", "-k", "3", "--html", html, server=server)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["rank", "id", "class", "distance", "path"]
    first = lines[2].split()
    assert first[0] == "1" and first[2] == "dog" and float(first[3]) == pytest.approx(0, abs=1e-3)
    assert first[4] == str(query)
    assert len([x for x in lines if re.match(r"\s*\d+\s+\d+\s", x)]) == 3
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert len(re.findall(r'<img src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', page)) == 4  # query + 3


def test_duplicates_prints_groups_and_writes_html(server, tmp_path):
    from PIL import Image
    folder = tmp_path / "library"
    folder.mkdir()
    eagle = Image.open(DARKNET / "eagle.jpg")
    shutil.copy(DARKNET / "eagle.jpg", folder / "eagle.jpg")
    eagle.save(folder / "eagle.png")                        # the same pixels, other bytes
    shutil.copy(DARKNET / "giraffe.jpg", folder / "giraffe.jpg")
    Image.open(DARKNET / "dog.jpg").save(folder / "dog.jpg")
    done = cli("load", folder, "--table", "cli_library", "--class-from", "none", server=server)
    assert done.returncode == 0, done.stderr
    html = tmp_path / "groups.html"
    done = cli("duplicates", "--table", "cli_library", "--html", html, server=server)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["group", "id", "verdict", "distance", "path"]
    groups = [line.split() for line in lines[2:] if re.match(r"\d+\s", line)]
    assert sorted(pathlib.Path(g[4]).name for g in groups) == ["eagle.jpg", "eagle.png"]
    assert {g[0] for g in groups} == {"1"} and {g[2] for g in groups} == {"exact"}
    page = html.read_text()
    assert "group 1 (2 images)" in page
    assert len(re.findall(r'<img src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', page)) == 2
    done = cli("duplicates", "--table", "nope", server=server)
    assert done.returncode == 1 and "does not exist" in done.stderr


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_search_metrics_and_where(server, folder, loaded, metric):
    done = cli("search", folder / "eagle" / "eagle.jpg", "--table", "cli_images", "--metric", metric,
               "--where", "class <> 'eagle' AND path NOT LIKE '%giraffe%'", server=server)
    assert done.returncode == 0, done.stderr
    body = done.stdout.splitlines()[2:]
    (expected,) = rows(server, "SELECT least(count(*), 10) FROM cli_images WHERE feature IS NOT NULL"
                               " AND class <> 'eagle' AND path NOT LIKE '%%giraffe%%'")[0]
    assert len(body) == expected >= 7
    assert not any(" eagle " in x or "giraffe" in x for x in body)


def test_csv_input_with_classes_through_pg_environment(server, tmp_path):
    (tmp_path / "pics").mkdir()
    listing = []
    for i, cls, png in fashion_sample(1)[:3]:
        (tmp_path / "pics" / f"{i}.png").write_bytes(png)
        listing.append([f"pics/{i}.png", cls])
    (tmp_path / "pics" / "unlisted.png").write_bytes(fashion_sample(1)[5][2])
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "class"]] + listing)
    done = cli("load", tmp_path / "list.csv", "--table", "cli_catalog", env_dsn=pg_env(server))
    assert done.returncode == 0, done.stdout + done.stderr
    got = sorted(rows(server, "SELECT path, class FROM cli_catalog WHERE feature IS NOT NULL"))
    assert got == sorted((str(tmp_path / p), c) for p, c in listing)

    done = cli("search", tmp_path / listing[1][0], "--table", "cli_catalog", "-k", "1", env_dsn=pg_env(server))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2].split()[2] == listing[1][1]


def test_csv_without_header_and_a_missing_file(server, tmp_path):
    shutil.copy(DARKNET / "horses.jpg", tmp_path / "h.jpg")
    (tmp_path / "list.csv").write_text("h.jpg,horse\nmissing.jpg,ghost\n")
    done = cli("load", tmp_path / "list.csv", "--table", "cli_csv2", "--no-embed", server=server)
    assert done.returncode == 3, done.stdout + done.stderr
    assert re.search(r"unreadable: .*missing\.jpg: No such file", done.stdout)
    assert "embedded" not in done.stdout
    assert rows(server, "SELECT class, feature IS NULL FROM cli_csv2") == [("horse", True)]


def test_errors_exit_1_with_a_message(server, tmp_path):
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as conn:
        conn.execute("CREATE TABLE cli_other (id int PRIMARY KEY, image bytea)")
    (tmp_path / "a.png").write_bytes(encode(Image.new("RGB", (8, 8))))
    done = cli("load", tmp_path, "--table", "cli_other", server=server)
    assert done.returncode == 1
    assert "cli_other exists without the column(s) path, sha256, class, feature" in done.stderr
    assert "Traceback" not in done.stderr

    done = cli("search", tmp_path / "a.png", "--table", "no_such_table", server=server)
    assert (done.returncode, done.stderr.strip()) == (1, "pgvision: error: table no_such_table does not exist")

    bad = dict(pg_env(server), PGPORT="1")
    done = cli("search", tmp_path / "a.png", "--table", "cli_images", env_dsn=bad)
    assert done.returncode == 1 and "could not connect" in done.stderr

    assert cli("load", tmp_path, server=server).returncode == 2     # --table is required


def test_demo_end_to_end_with_a_small_sample():
    folder = pathlib.Path(tempfile.mkdtemp(prefix="pgvision-cli-demo-", dir="/var/tmp")) / "demo"
    folder.parent.chmod(0o755)      # the server runs as postgres
    try:
        done = cli("demo", "--dir", folder, "--port", "54391", "--sample", "50", "--queries", "1", timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "load: 57 files copied" in out
        assert "embed: 57 features computed" in out
        assert re.search(r"search: a darknet photo.*\n.*\n.*\n\s+1\s+\d+\s+dog\s", out)
        assert re.search(r"^  all\s+\d\.\d{3}$", out, re.M)
        assert "server stopped" in out
        sheet = folder / "contact-sheet.html"
        assert f"contact sheet: {sheet}" in out
        assert sheet.read_text().count("data:image/jpeg;base64,") == 3 * 11
        assert not (folder / "data" / "postmaster.pid").exists()
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "keep.txt").write_text("mine\n")
    done = cli("demo", "--dir", tmp_path)
    assert done.returncode == 1
    assert "is not empty and not a pgvision demo folder" in done.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine\n"
