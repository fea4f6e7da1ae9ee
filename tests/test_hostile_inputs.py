"""Hostile inputs (tests/hostile.py) through pgvision.embed and embed_batch, as ``app``.

Every input must end within a bounded time, either with a finite 1280-d feature or with an
error whose SQLSTATE is an allowed one and whose message carries no Python traceback; the
backend must survive (same pid) and embed a good image afterwards. The counts are printed
at the end whatever pytest's capture settings.
"""

import collections
import os
import time

import numpy as np
import psycopg
import pytest

from conftest import APP_ROLE, dsn
from hostile import (ALLOWED_SQLSTATES, GOOD, NEAR_LIMIT, blocks, corpus, encode, png_declaring,
                     png_zero_filled)

CORPUS = corpus()
OTHER = encode(blocks(seed=12), "JPEG", quality=90)
TIME_LIMIT = 20  # seconds per input; statement_timeout is 30 s
RESULTS = {}  # name -> "ok", a SQLSTATE, or "lost"
TIMES = {}


class Session:
    """One connection as the ordinary role for the module, reopened if its backend dies."""

    def __init__(self, server):
        self.server = server
        self.conn = None
        self.open()

    def open(self):
        from pgvector.psycopg import register_vector

        deadline = time.monotonic() + 60
        while True:  # after a crash the server needs a moment to recover
            try:
                self.conn = psycopg.connect(dsn(self.server, user=APP_ROLE), autocommit=True)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        register_vector(self.conn)
        self.conn.execute("SET statement_timeout = '30s'")
        self.conn.execute("SELECT pgvision.embed(%s)", [GOOD])  # the model is loaded

    def pid(self):
        return self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def close(self):
        self.conn.close()


@pytest.fixture(scope="module")
def session(server):
    s = Session(server)
    yield s
    s.close()


def vec(v):
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


def check_message(error):
    message = error.diag.message_primary or ""
    assert message, error
    assert "Traceback" not in message and "plpy" not in message and 'File "' not in message, \
        message
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("name,data,expectation", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_input(session, name, data, expectation):
    c = session.conn
    pid = session.pid()
    start = time.monotonic()
    feature = error = None
    try:
        feature = c.execute("SELECT pgvision.embed(%s)", [data]).fetchone()[0]
    except psycopg.Error as e:
        error = e
    took = TIMES[name] = time.monotonic() - start
    if c.broken:
        RESULTS[name] = "lost"
        session.open()
        pytest.fail(f"{name}: the backend was lost ({error})")
    RESULTS[name] = "ok" if error is None else error.sqlstate

    assert took < TIME_LIMIT, f"{name} took {took:.1f} s"
    assert session.pid() == pid
    if error is not None:
        assert error.sqlstate in ALLOWED_SQLSTATES, (error.sqlstate, str(error))
        assert expectation != "ok", f"{name}: {error.sqlstate} {error}"
        message = check_message(error)
    else:
        assert expectation != "error", f"{name} gave a feature"
        feature = vec(feature)
        assert feature.shape == (1280,) and np.isfinite(feature).all()
    assert c.execute("SELECT vector_dims(pgvision.embed(%s))", [GOOD]).fetchone()[0] == 1280

    # the same input among good images and a NULL in embed_batch
    items = [GOOD, None, data, OTHER]
    try:
        got = c.execute("SELECT pgvision.embed_batch(%s)::text[]", [items]).fetchone()[0]
    except psycopg.Error as e:
        assert not c.broken, f"{name}: the backend was lost in embed_batch"
        assert error is not None, f"{name}: embed_batch failed but embed did not: {e}"
        assert e.sqlstate == error.sqlstate
        batch_message = check_message(e)
        assert "image 3: " in batch_message, batch_message
        assert batch_message.endswith(message.split(": ", 1)[-1]), (batch_message, message)
    else:
        assert error is None, f"{name}: embed_batch gave features but embed failed"
        assert got[1] is None and len(got) == 4
        batch = np.array(got[2].strip("[]").split(","), dtype=np.float32)
        assert np.abs(batch - feature).max() < 1e-5
    assert session.pid() == pid


def test_default_limits_are_the_documented_ones(session):
    c = session.conn
    # 49 Mpx passes (the zero-filled PNG of the corpus); one pixel row more than 50 Mpx does not
    with pytest.raises(psycopg.Error) as info:
        c.execute("SELECT pgvision.embed(%s)", [png_declaring(NEAR_LIMIT + 72, NEAR_LIMIT + 72)])
    assert info.value.sqlstate == "54000"
    assert "pgvision.max_pixels (50000000)" in info.value.diag.message_primary
    with pytest.raises(psycopg.Error) as info:
        c.execute("SELECT pgvision.embed(%s)", [GOOD + bytes(64 * 1024 * 1024 + 1 - len(GOOD))])
    assert info.value.sqlstate == "54000"
    assert "pgvision.max_image_bytes (67108864)" in info.value.diag.message_primary


def _status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024
    return out


PEAK_CASES = {name: data for name, data, _ in CORPUS if name in (
    "png-zero-filled-7000x7000-rgb", "jpeg-sof-near-limit-8x8-data",
    "gif-screen-near-limit-1x1-frame", "webp-vp8x-canvas-near-limit-1x1-frames")}


@pytest.mark.parametrize("name", [
    "png-zero-filled-7000x7000-rgb", "png-zero-filled-7000x7000-rgba",
    "png-zero-filled-7000x7000-gray16", "jpeg-sof-near-limit-8x8-data",
    "gif-screen-near-limit-1x1-frame", "webp-vp8x-canvas-near-limit-1x1-frames"])
def test_peak_memory_near_the_pixel_limit(server, name, record_property, capsys):
    """What one image just under the default pgvision.max_pixels costs a backend."""
    if name.endswith("-rgba"):
        data = png_zero_filled(NEAR_LIMIT, NEAR_LIMIT, color_type=6)
    elif name.endswith("-gray16"):
        data = png_zero_filled(NEAR_LIMIT, NEAR_LIMIT, bit_depth=16, color_type=0)
    else:
        data = PEAK_CASES[name]
    with psycopg.connect(dsn(server, user=APP_ROLE), autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        if not os.access(f"/proc/{pid}/status", os.R_OK):
            pytest.skip("the server's processes are not visible from here")
        c.execute("SELECT pgvision.embed(%s)", [GOOD])
        before = _status(pid)
        start = time.monotonic()
        try:
            c.execute("SELECT pgvision.embed(%s)", [data])
        except psycopg.Error as e:
            # refused before decoding: its format would need more than the stated bound
            assert e.sqlstate == "54000" and name.startswith("webp"), str(e)
        took = time.monotonic() - start
        after = _status(pid)
    peak = after["VmHWM"] - before["VmHWM"]
    line = (f"{name}: {len(data) // 1024} KB in, peak RSS +{peak} MB over a loaded backend's "
            f"{before['VmHWM']} MB, {took:.1f} s")
    record_property("peak", line)
    with capsys.disabled():
        print(f"\n[hostile] {line}", flush=True)
    assert peak < 1500


def test_summary(record_property, capsys):
    """The counts for the whole corpus (runs last)."""
    by_state = collections.Counter(v for v in RESULTS.values() if v not in ("ok", "lost"))
    slowest = max(TIMES, key=TIMES.get) if TIMES else None
    ok = sum(v == "ok" for v in RESULTS.values())
    line = (f"inputs tried {len(RESULTS)} of {len(CORPUS)}, ok {ok}, "
            f"errors {sum(by_state.values())} ("
            + ", ".join(f"{s}: {n}" for s, n in sorted(by_state.items()))
            + f"), backends lost {sum(v == 'lost' for v in RESULTS.values())}"
            + (f", slowest {slowest} {TIMES[slowest]:.1f} s" if slowest else ""))
    record_property("summary", line)
    with capsys.disabled():
        print(f"\n[hostile] {line}", flush=True)
    assert "lost" not in RESULTS.values()
