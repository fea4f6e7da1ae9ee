"""Faults: cancelling long work, many sessions at once, backends killed during a backfill.

Figures (latencies, memory, counts) are printed to the terminal whatever pytest's capture
settings, and recorded as test properties. The SIGKILL test restarts every backend of the
server (crash recovery), so it comes last; later tests open new connections.
"""

import os
import signal
import threading
import time

import numpy as np
import psycopg
import pytest
from psycopg import sql

from conftest import APP_ROLE, dsn
from data import PHOTOS, fashion_sample, photo

SMALL = [png for _, _, png in fashion_sample(20)]  # 200 small PNGs, 20 per class
# work that outlasts a 1 s timeout on a fast CPU too (200 thumbnails took under 1 s on one)
LONG = SMALL * 10


@pytest.fixture
def report(capsys, record_property):
    def say(key, text):
        record_property(key, text)
        with capsys.disabled():
            print(f"\n[faults] {key}: {text}", flush=True)
    return say


def connect(server, user=APP_ROLE, **kwargs):
    from pgvector.psycopg import register_vector

    c = psycopg.connect(dsn(server, user=user), autocommit=True, **kwargs)
    register_vector(c)
    return c


def primary(error):
    return error.diag.message_primary or ""


def vec(v):
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


def proc_status(pid):
    """VmRSS, RssAnon, VmHWM of a local process in kB (the tests run on the server's host)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


# --- cancel -----------------------------------------------------------------------------

# Python cannot be interrupted, but embed_batch checks for a cancel before each image and
# each model call, so a cancel waits at most for one model call of pgvision.batch_size
# images (32 by default: about half a second on two idle cores).

def chunk_seconds(c):
    """Seconds one model call of pgvision.batch_size images takes here, now."""
    size = int(c.execute("SELECT coalesce(current_setting('pgvision.batch_size', true), '32')")
               .fetchone()[0] or 32)
    c.execute("SELECT pgvision.embed_batch(%s)", [SMALL[:size]])  # model loaded, warm
    start = time.monotonic()
    c.execute("SELECT pgvision.embed_batch(%s)", [SMALL[:size]])
    return time.monotonic() - start


def test_statement_timeout_stops_embed_batch(conn, report):
    chunk = chunk_seconds(conn)
    conn.execute("SET statement_timeout = '1s'")
    start = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled) as info:
        conn.execute("SELECT pgvision.embed_batch(%s)", [LONG])
    elapsed = time.monotonic() - start
    conn.execute("RESET statement_timeout")
    report("statement_timeout 1s, embed_batch of 2,000 images",
           f"57014 after {elapsed:.2f} s ({(elapsed - 1) * 1000:.0f} ms past the timeout; "
           f"one model call of a batch takes {chunk * 1000:.0f} ms here)")
    assert info.value.sqlstate == "57014"
    assert "statement timeout" in primary(info.value)
    assert "Traceback" not in primary(info.value) and "plpy" not in primary(info.value)
    assert elapsed < 1.5 + chunk
    assert conn.execute("SELECT vector_dims(pgvision.embed(%s))", [SMALL[1]]).fetchone()[0] == 1280


def test_pg_cancel_backend_stops_embed_batch(conn, admin, report):
    chunk = chunk_seconds(conn)
    pid = conn.info.backend_pid
    outcome = {}

    def run():
        try:
            conn.execute("SELECT pgvision.embed_batch(%s)", [LONG])
            outcome["result"] = "finished"
        except psycopg.Error as e:
            outcome["error"] = e
        outcome["at"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
            "AND query LIKE %s", [pid, "%embed_batch%"]).fetchone():
        time.sleep(0.02)
    time.sleep(0.5)  # well inside the model's work
    asked = time.monotonic()
    assert admin.execute("SELECT pg_cancel_backend(%s)", [pid]).fetchone()[0]
    worker.join(60)
    assert not worker.is_alive()
    assert "error" in outcome, outcome
    latency = outcome["at"] - asked
    report("pg_cancel_backend during embed_batch of 2,000 images",
           f"{outcome['error'].sqlstate} {latency * 1000:.0f} ms after the cancel "
           f"(one model call of a batch takes {chunk * 1000:.0f} ms here)")
    assert outcome["error"].sqlstate == "57014"
    assert "canceling statement due to user request" in primary(outcome["error"])
    assert latency < 0.5 + chunk
    assert conn.info.backend_pid == pid
    assert conn.execute("SELECT vector_dims(pgvision.embed(%s))", [SMALL[1]]).fetchone()[0] == 1280


def test_interrupt_check_is_cheap(admin, report):
    # the check itself, timed inside the backend; it needs the runtime loaded there
    admin.execute("SELECT pgvision.embed(%s)", [SMALL[0]])
    notices = []
    admin.add_notice_handler(lambda d: notices.append(d.message_primary))
    admin.execute("""DO LANGUAGE plpython3u $$
import time
from pgvision_runtime import sqlapi
check = sqlapi.interrupt_check(plpy, GD)
for _ in range(200):
    check()
best = None
for _ in range(5):
    start = time.perf_counter()
    for _ in range(2000):
        check()
    took = (time.perf_counter() - start) / 2000
    best = took if best is None else min(best, took)
plpy.notice("%.3f" % (best * 1e6))
$$""")
    check_us = float(notices[-1])
    # and what one image costs in embed_batch, for scale
    start = time.monotonic()
    admin.execute("SELECT pgvision.embed_batch(%s)", [SMALL[:64]])
    image_us = (time.monotonic() - start) / 64 * 1e6
    report("interrupt check", f"{check_us:.1f} us per check, {image_us / 1000:.1f} ms per image "
                              f"in embed_batch: {check_us / image_us * 100:.3f}% overhead")
    assert check_us < 200


# --- many sessions at once --------------------------------------------------------------

SESSIONS = 16
WORK_SECONDS = 20


def test_concurrent_sessions_give_serial_results(server, conn, admin, report):
    images = [png for _, _, png in fashion_sample(2)] + [photo(p) for p in PHOTOS[:4]]
    conn.execute("DROP TABLE IF EXISTS cc_items")
    conn.execute("CREATE TABLE cc_items (id int PRIMARY KEY, image bytea, feature vector(1280))")
    try:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO cc_items (id, image, feature) "
                            "VALUES (%s, %s, pgvision.embed(%s))",
                            [(i, img, img) for i, img in enumerate(images)])
        search = ("SELECT array_agg(id ORDER BY d, id) FROM (SELECT id, feature <-> q AS d "
                  "FROM cc_items, pgvision.embed(%s) AS q ORDER BY d, id LIMIT 5) s")
        triples = [[images[(3 * k + j) % len(images)] for j in range(3)] for k in range(8)]
        ops = ([("embed", i) for i in range(len(images))]
               + [("search", i) for i in range(len(images))]
               + [("batch", k) for k in range(len(triples))])

        def run(c, op):
            kind, i = op
            if kind == "embed":
                return [vec(c.execute("SELECT pgvision.embed(%s)", [images[i]]).fetchone()[0])]
            if kind == "search":
                return c.execute(search, [images[i]]).fetchone()[0]
            return [vec(r[0]) for r in c.execute("SELECT unnest(pgvision.embed_batch(%s))",
                                                 [triples[i]]).fetchall()]

        def same(expected, got, kind):
            if kind == "search":
                return expected == got
            return len(expected) == len(got) and all(
                np.abs(a - b).max() < 1e-6 for a, b in zip(expected, got))

        serial = {op: run(conn, op) for op in ops}

        times = {}

        def go():  # run by one thread when all sessions have loaded the model
            times["loaded"] = time.monotonic()
            times["deadline"] = times["loaded"] + WORK_SECONDS

        ready = threading.Barrier(SESSIONS + 1, action=go, timeout=300)
        done = threading.Barrier(SESSIONS + 1, timeout=300)
        stats = [dict(statements=0, errors=[], mismatches=[]) for _ in range(SESSIONS)]

        def session(n):
            st = stats[n]
            try:
                with connect(server) as c:
                    st["pid"] = c.info.backend_pid
                    st["rss_fresh"] = proc_status(st["pid"])
                    run(c, ("embed", n % len(images)))  # loads the model
                    st["rss_loaded"] = proc_status(st["pid"])
                    ready.wait()
                    k = n
                    while time.monotonic() < times["deadline"]:
                        op = ops[k % len(ops)]
                        k += 1
                        try:
                            got = run(c, op)
                        except psycopg.Error as e:
                            st["errors"].append(f"{op}: {e.sqlstate} {e}")
                            continue
                        st["statements"] += 1
                        if not same(serial[op], got, op[0]):
                            st["mismatches"].append(op)
                    done.wait()  # memory is read while every session is still open
                    done.wait()
            except threading.BrokenBarrierError:
                pass
            except Exception as e:  # noqa: BLE001 - reported below
                st["errors"].append(f"session: {type(e).__name__}: {e}")
                ready.abort()
                done.abort()

        threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        try:
            ready.wait()
            loaded_at = times["loaded"]
            done.wait()
            worked = time.monotonic() - loaded_at
            pids = [r[0] for r in admin.execute("SELECT pid FROM pg_stat_activity "
                                                "WHERE datname = current_database()").fetchall()]
            server_mem = {pid: proc_status(pid) for pid in pids if os.path.exists(f"/proc/{pid}")}
            after = {st["pid"]: proc_status(st["pid"]) for st in stats}
            done.wait()
        except threading.BrokenBarrierError:
            for t in threads:
                t.join(60)
            raise AssertionError([e for st in stats for e in st["errors"]][:5]) from None
        for t in threads:
            t.join(60)

        statements = sum(st["statements"] for st in stats)
        errors = [e for st in stats for e in st["errors"]]
        mismatches = [m for st in stats for m in st["mismatches"]]
        mb = 1024
        rss = [after[st["pid"]]["VmRSS"] / mb for st in stats]
        anon = [after[st["pid"]]["RssAnon"] / mb for st in stats]
        growth = [(after[st["pid"]]["VmRSS"] - st["rss_fresh"]["VmRSS"]) / mb for st in stats]
        load_growth = [(st["rss_loaded"]["VmRSS"] - st["rss_fresh"]["VmRSS"]) / mb for st in stats]
        report("concurrency",
               f"{SESSIONS} sessions, {worked:.1f} s of work after {loaded_at - started:.1f} s of "
               f"model loading: {statements} statements ({statements / worked:.1f}/s), "
               f"{len(errors)} errors, {len(mismatches)} results differing from the serial run")
        report("concurrency memory",
               f"sum of VmRSS over the database's {len(server_mem)} backends "
               f"{sum(m['VmRSS'] for m in server_mem.values()) / mb:.0f} MB "
               f"(RssAnon {sum(m['RssAnon'] for m in server_mem.values()) / mb:.0f} MB); per "
               f"session backend VmRSS {min(rss):.0f}-{max(rss):.0f} MB, RssAnon "
               f"{min(anon):.0f}-{max(anon):.0f} MB, growth from a fresh backend "
               f"{min(growth):.0f}-{max(growth):.0f} MB ({np.mean(load_growth):.0f} MB of it "
               f"at the model load)")
        assert not errors, errors[:5]
        assert not mismatches, mismatches[:5]
        assert statements >= SESSIONS
        assert max(rss) < 600
    finally:
        conn.execute("DROP TABLE IF EXISTS cc_items")


# --- backends killed in the middle of a backfill ----------------------------------------

ROWS = [png for _, _, png in fashion_sample(3, split="test")]  # 30 rows


def make_logged_table(c, name):
    """A table of ROWS whose feature updates are logged (and slowed down a little)."""
    t, log = sql.Identifier(name), sql.Identifier(name + "_log")
    c.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(t, log))
    c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, image bytea, feature vector(1280))")
              .format(t))
    c.execute(sql.SQL("CREATE TABLE {} (id int)").format(log))
    c.execute(sql.SQL("""CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$
                         BEGIN INSERT INTO {} VALUES (NEW.id); PERFORM pg_sleep(0.05);
                         RETURN NEW; END $$""").format(log, log))
    c.execute(sql.SQL("CREATE TRIGGER log_feature AFTER UPDATE OF feature ON {} "
                      "FOR EACH ROW EXECUTE FUNCTION {}()").format(t, log))
    with c.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} (id, image) VALUES (%s, %s)").format(t),
                        list(enumerate(ROWS, 1)))


def drop_logged_table(c, name):
    t, log = sql.Identifier(name), sql.Identifier(name + "_log")
    c.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(t, log))
    c.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(log))


def start_backfill(server, name):
    """Runs CALL pgvision.embed_table(name, batch_size => 2) in a thread; returns
    (thread, backend pid, outcome dict)."""
    c = connect(server)
    pid = c.info.backend_pid
    c.execute("SELECT pgvision.embed(%s)", [ROWS[0]])  # the model is loaded before
    outcome = {}

    def run():
        try:
            c.execute("CALL pgvision.embed_table(%s, 'image', 'feature', batch_size => 2)", [name])
            outcome["result"] = "finished"
        except psycopg.Error as e:
            outcome["error"] = e
        outcome["at"] = time.monotonic()
        try:
            c.close()
        except psycopg.Error:
            pass

    worker = threading.Thread(target=run)
    worker.start()
    return worker, pid, outcome


def wait_for_rows(c, name, n, timeout=60):
    log = sql.Identifier(name + "_log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = c.execute(sql.SQL("SELECT count(*) FROM {}").format(log)).fetchone()[0]
        if count >= n:
            return count
        time.sleep(0.01)
    raise AssertionError(f"fewer than {n} rows embedded after {timeout} s")


def check_resumed(c, name):
    """Re-run the backfill; every row then has the feature pgvision.embed gives, and the
    log shows each row updated exactly once. Returns (rows before the re-run, rows by it)."""
    t, log = sql.Identifier(name), sql.Identifier(name + "_log")
    before = c.execute(sql.SQL("SELECT count(*) FROM {}").format(log)).fetchone()[0]
    assert c.execute("SELECT finished FROM pgvision.backfill_progress "
                     "WHERE tbl = %s::regclass", [name]).fetchone()[0] is None
    c.execute("CALL pgvision.embed_table(%s, 'image', 'feature', batch_size => 2)", [name])
    rows_done = c.execute("SELECT rows_done FROM pgvision.backfill_progress "
                          "WHERE tbl = %s::regclass", [name]).fetchone()[0]
    assert rows_done == len(ROWS) - before
    got = c.execute(sql.SQL("SELECT id, feature, pgvision.embed(image) FROM {} ORDER BY id")
                    .format(t)).fetchall()
    assert [r[0] for r in got] == list(range(1, len(ROWS) + 1))
    for i, feature, single in got:
        assert feature is not None, i
        assert np.abs(vec(feature) - vec(single)).max() < 1e-5, i
    counts = c.execute(sql.SQL("SELECT id, count(*) FROM {} GROUP BY id ORDER BY id")
                       .format(log)).fetchall()
    assert counts == [(i, 1) for i in range(1, len(ROWS) + 1)]
    return before, rows_done


def test_terminated_backfill_resumes_and_embeds_each_row_once(server, conn, admin, report):
    name = "kf_terminate"
    make_logged_table(conn, name)
    try:
        worker, pid, outcome = start_backfill(server, name)
        wait_for_rows(admin, name, 4)  # at least two batches of 2 committed
        asked = time.monotonic()
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
        worker.join(30)
        assert not worker.is_alive()
        assert "error" in outcome, outcome
        gone = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                             [pid]).fetchone()[0] == 0
        before, resumed = check_resumed(conn, name)
        report("pg_terminate_backend during embed_table",
               f"{type(outcome['error']).__name__} ({outcome['error'].sqlstate}) "
               f"{(outcome['at'] - asked) * 1000:.0f} ms after the request; {before} of "
               f"{len(ROWS)} rows were committed, the re-run embedded {resumed}; every row "
               f"embedded once and equal to pgvision.embed")
        assert outcome["error"].sqlstate == "57P01"
        assert gone
        assert 4 <= before < len(ROWS)
    finally:
        drop_logged_table(conn, name)


def wait_for_server(server, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn(server), autocommit=True, connect_timeout=2) as c:
                c.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


@pytest.mark.skipif(os.geteuid() != 0, reason="SIGKILL of a server process needs root")
def test_sigkilled_backend_crash_recovery_then_resume(server, report):
    # Last in this file: the postmaster answers a killed backend by restarting them all.
    name = "kf_sigkill"
    with connect(server) as c:
        make_logged_table(c, name)
    bystander = psycopg.connect(dsn(server), autocommit=True)
    try:
        worker, pid, outcome = start_backfill(server, name)
        wait_for_rows(bystander, name, 4)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        worker.join(30)
        assert not worker.is_alive()
        assert "error" in outcome, outcome
        ended = time.monotonic() + 30
        while True:  # every other backend is ended too, then the server recovers
            try:
                bystander.execute("SELECT 1")
            except psycopg.OperationalError:
                break
            assert time.monotonic() < ended, "the other sessions survived a SIGKILLed backend"
            time.sleep(0.05)
        wait_for_server(server)
        recovered = time.monotonic() - killed
        with connect(server) as c:
            before, resumed = check_resumed(c, name)
        report("SIGKILL of the backend during embed_table",
               f"client saw {type(outcome['error']).__name__}; server accepted connections "
               f"again {recovered:.1f} s after the kill; {before} of {len(ROWS)} rows were "
               f"committed, the re-run embedded {resumed}; every row embedded once and equal "
               f"to pgvision.embed")
        assert 4 <= before < len(ROWS)
        assert recovered < 60
    finally:
        bystander.close()
        wait_for_server(server)
        with connect(server) as c:
            drop_logged_table(c, name)
