"""`pgvision serve` in a real browser: Debian's chromium, driven through its chromedriver by
Selenium (nothing is downloaded), against a table of the darknet photos and a few
Fashion-MNIST images, served as a role that may only SELECT from that table.

The browser uploads a photo through the file input, sees that photo's row first, clicks it
and sees the rows like it; the screenshot of the results is docs/serve.png, which the README
shows. The error pages (too large, not an image, unknown table or key) are checked over HTTP.
"""

import html
import io
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import psycopg
import pytest
from PIL import Image

from conftest import APP_ROLE, ROOT, dsn
from data import DARKNET, PHOTOS, fashion_sample

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -r requirements-dev.txt")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TABLE = "web_images"
READER = "web_reader"  # SELECT on TABLE, nothing else
SCREENSHOT = ROOT / "docs" / "serve.png"


def client_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k == "PG_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "client"), env.get("PYTHONPATH")]))
    return env


def client(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pgvision_client", *map(str, args)], capture_output=True,
                          text=True, env=client_env(), stdin=subprocess.DEVNULL, timeout=timeout)


@pytest.fixture(scope="module")
def table(server, tmp_path_factory):
    """TABLE loaded by `pgvision load` as app: the darknet photos (class = the photo's name)
    and six Fashion-MNIST images; READER may SELECT from it. Returns {photo name: id}."""
    root = tmp_path_factory.mktemp("web-images")
    for name in PHOTOS:
        (root / name).mkdir()
        shutil.copy(DARKNET / f"{name}.jpg", root / name / f"{name}.jpg")
    for i, cls, png in fashion_sample(1)[:6]:
        (root / cls).mkdir(exist_ok=True)
        (root / cls / f"{i}.png").write_bytes(png)
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    done = client("load", root, "--table", TABLE, "--dsn", dsn(server, user=APP_ROLE))
    assert done.returncode == 0, done.stdout + done.stderr
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [READER]).fetchone():
            conn.execute(f"CREATE ROLE {READER} LOGIN")
        conn.execute(f"GRANT SELECT ON {TABLE} TO {READER}")
        ids = dict(conn.execute(f"SELECT class, id::text FROM {TABLE} WHERE path LIKE '%%.jpg'").fetchall())
    assert sorted(ids) == sorted(PHOTOS)
    return ids


@pytest.fixture(scope="module")
def app(server, table):
    """`pgvision serve` as READER on a free port: its base URL. It must stop on ctrl-c."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvision_client", "serve", "--table", TABLE, "--port", "0",
         "--dsn", dsn(server, user=READER)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env(), stdin=subprocess.DEVNULL)
    deadline, line = time.monotonic() + 60, ""
    while "listening on" not in line:
        ready, _, _ = select.select([proc.stdout], [], [], max(0, deadline - time.monotonic()))
        if not ready or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"pgvision serve did not start: {line}{proc.stdout.read()}{proc.stderr.read()}")
        line = proc.stdout.readline()
    url = line.split("listening on ", 1)[1].split()[0]
    assert url.startswith("http://127.0.0.1:")
    yield url
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.path.exists(path), f"{path} is missing: apt-get install chromium chromium-driver (scripts/deps.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def results(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#results figure.result")


def images_loaded(driver):
    """The number of <img> on the page that have not (yet) decoded."""
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")


def test_upload_finds_the_photo_then_click_searches_like_it(app, browser, table):
    browser.get(app)
    assert "pgvision" in browser.title
    # choosing a file submits the form (the page's script); no click needed
    browser.find_element(By.ID, "image").send_keys(str(DARKNET / "dog.jpg"))
    WebDriverWait(browser, 120).until(EC.presence_of_element_located((By.ID, "results")))
    found = results(browser)
    assert len(found) == 12  # the default k; the table has 13 rows
    first = found[0]
    assert first.get_attribute("data-id") == table["dog"]
    assert "dog.jpg" in first.text and "distance 0.0000" in first.text
    assert "query: dog.jpg" in browser.find_element(By.ID, "query").text
    WebDriverWait(browser, 60).until(lambda d: images_loaded(d) == 0)  # thumbnails from /image
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))

    first.find_element(By.TAG_NAME, "a").click()
    WebDriverWait(browser, 120).until(EC.url_contains(f"/like/{TABLE}/{table['dog']}"))
    assert f"like: id {table['dog']}" in browser.find_element(By.ID, "query").text
    like = results(browser)
    ids = [r.get_attribute("data-id") for r in like]
    assert len(ids) == 12 and table["dog"] not in ids  # search_like leaves the row out
    assert [int(r.get_attribute("data-rank")) for r in like] == list(range(1, 13))
    WebDriverWait(browser, 60).until(lambda d: images_loaded(d) == 0)


def multipart(fields, files):
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(url, fields=None, files=None):
    """(status, content type, body bytes) of a GET, or a POST of a form when fields or files."""
    data, headers = None, {}
    if fields is not None or files is not None:
        data, headers["Content-Type"] = multipart(fields or {}, files or {})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=120) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def search(app, data, filename="query.jpg", **fields):
    return request(app + "search", {"table": TABLE, **fields}, {"image": (filename, data)})


def result_ids(body):
    text = body.decode()
    return [part.split('"', 1)[0] for part in text.split('class="result" data-id="')[1:]]


def test_filter_on_a_column(app, table):
    status, _, body = search(app, (DARKNET / "dog.jpg").read_bytes(), column="class", value="eagle", k="5")
    assert status == 200 and result_ids(body) == [table["eagle"]]
    # the value is a parameter, not SQL
    status, _, body = search(app, (DARKNET / "dog.jpg").read_bytes(), column="class", value="x' OR true --")
    assert status == 200 and result_ids(body) == [] and b"no rows" in body
    status, _, body = search(app, (DARKNET / "dog.jpg").read_bytes(), column="true OR class", value="x")
    assert status == 400 and b"has no column true OR class to filter on" in body
    status, _, body = search(app, (DARKNET / "dog.jpg").read_bytes(), column="feature", value="x")
    assert status == 400  # not a column to type a value for


def test_too_large_an_upload_gets_413_and_a_message(app):
    status, ctype, body = search(app, b"\xff" * (21 * 1024 * 1024))
    assert status == 413 and ctype.startswith("text/html")
    assert b"the upload is larger than 20 MB" in body


def test_a_file_that_is_not_an_image_gets_the_servers_message(app, server):
    data = b"this is not an image\n" * 10
    with psycopg.connect(dsn(server, user=READER)) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute("SELECT pgvision.embed(%s::bytea)", [data])
    status, ctype, body = search(app, data, "notes.txt")
    assert 400 <= status < 500 and ctype.startswith("text/html")
    assert html.escape(raised.value.diag.message_primary).encode() in body
    assert b"Traceback" not in body and b'File "' not in body
    status, _, body = request(app + "search", {"table": TABLE}, {})
    assert status == 400 and b"choose an image file" in body


def test_unknown_table_key_and_size_get_messages(app, table):
    status, _, body = request(app + "image/no_such_table/1")
    assert status == 404 and b"table no_such_table is not served here" in body
    status, _, body = request(app + "like/no_such_table/1")
    assert status == 404 and b"not served here" in body
    status, _, body = request(app + f"like/{TABLE}/999999999")
    assert status == 404 and b"has no row with key 999999999" in body
    status, _, body = request(app + f"image/{TABLE}/999999999")
    assert status == 404 and b"has no row with id = 999999999" in body
    status, _, body = request(app + f"image/{TABLE}/1%27%20OR%20true")
    assert status == 400 and b"invalid input syntax for type bigint" in body
    status, _, body = request(app + f"image/{TABLE}/{table['dog']}?size=lots")
    assert status == 400 and b"size must be a whole number" in body and b"Traceback" not in body
    status, _, body = request(app + f"like/{TABLE}/{table['dog']}?k=1000")
    assert status == 400 and b"k must be between 1 and 100, not 1000" in body


def test_image_url_returns_a_thumbnail(app, table):
    status, ctype, body = request(app + f"image/{TABLE}/{table['giraffe']}?size=64")
    assert status == 200 and ctype == "image/jpeg"
    img = Image.open(io.BytesIO(body))
    assert img.format == "JPEG" and max(img.size) <= 64


def test_a_table_it_cannot_serve_is_an_error_not_a_traceback(server, table):
    done = client("serve", "--table", "no_such_table", "--port", "0", "--dsn", dsn(server, user=READER), timeout=60)
    assert done.returncode == 1
    assert "table no_such_table does not exist" in done.stderr and "Traceback" not in done.stderr
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS web_private")
        conn.execute("CREATE TABLE web_private (id int PRIMARY KEY, image bytea, feature vector(3))")
    done = client("serve", "--table", "web_private", "--port", "0", "--dsn", dsn(server, user=READER), timeout=60)
    assert done.returncode == 1 and "may not read table web_private" in done.stderr


def test_duplicates_page_shows_each_group_with_its_verdicts(app, browser, server, table):
    """Runs last: it adds copies of the dog to the table."""
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {TABLE} (path, sha256, class, image, feature)"
                     f" SELECT path || '.copy', sha256, class, image, feature FROM {TABLE} WHERE id = %s",
                     [int(table["dog"])])
        conn.execute(f"INSERT INTO {TABLE} (path, sha256, class, image)"
                     f" SELECT path || '.small.jpg', 'resized', class, pgvision.thumbnail(image, 300) FROM {TABLE} WHERE id = %s",
                     [int(table["dog"])])
        conn.execute(f"UPDATE {TABLE} SET feature = pgvision.embed(image) WHERE feature IS NULL")
    browser.get(app + f"duplicates/{TABLE}")
    groups = browser.find_elements(By.CSS_SELECTOR, "section.group")
    assert len(groups) == 1
    figures = groups[0].find_elements(By.CSS_SELECTOR, "figure.result")
    verdicts = sorted(f.get_attribute("data-verdict") for f in figures)
    # the same bytes twice; the 300-pixel thumbnail a look-alike (no hash column in the table)
    assert verdicts == ["exact", "exact", "similar"]
    assert table["dog"] in {f.get_attribute("data-id") for f in figures}
    WebDriverWait(browser, 30).until(lambda d: images_loaded(d) == 0)
    status, _, body = request(app + f"duplicates/{TABLE}?near_bits=lots")
    assert status == 400 and b"near_bits must be a whole number" in body
    status, _, body = request(app + f"duplicates/{TABLE}?similar_distance=5")
    assert status == 400 and b"cosine distances" in body
    status, _, body = request(app + "duplicates/no_such_table")
    assert status == 404
