"""Every ```sql and ```psql block of README.md runs as written, in README order, through psql.

Each block is written to a file and run with ``psql -X -v ON_ERROR_STOP=1 -f`` (so psql's
meta-commands, such as ``\\lo_import``, work), one psql session a block, from a scratch folder
as the working directory. A block that fails fails the test with its line in README.md, the
role it ran as, and psql's output. Blocks of other kinds (```text signatures, ```sh) are not
run.

Where the blocks run:

- Blocks outside "## Scale-out" run in a fresh database that this test creates empty: the
  README's own ``CREATE EXTENSION pgvision CASCADE`` block installs pgvision in it.
- Blocks under "## Scale-out" run in a second fresh database, the coordinator, against three
  shard servers started here as tests/test_shard.py starts its shards (each with pgvision in
  a database ``images``, the ``dbname`` the README's ``CREATE SERVER`` names). The README's
  shard addresses are the one substitution this test makes: in those blocks
  ``host 'shardN.example.com', port '5432'`` becomes the address and port of the suite's
  server for shardN. The README's setup block creates the servers, the user mappings and
  ``add_shard`` itself.

Who runs them: the superuser ``postgres``, as the README says for installing, loading files
with ``pg_read_binary_file`` and setting up shards; the README's example role ``alice`` is
created here (and dropped at the end) so that its ``GRANT``s run. Markers, an HTML comment on
the line before a block (few on purpose; keep this list in step with README.md):

- ``<!-- as: ROLE -->``: the block runs as ROLE (``app``, the suite's ordinary role, or
  ``alice``), which just before gets what a user of the tables would have been granted:
  USAGE and CREATE on schema public, and SELECT, INSERT, UPDATE, DELETE on its tables.
  Used where the README shows what a role without superuser does (``\\lo_import``).
- ``<!-- runs after: SECTION -->``: the block runs after the last block of the section whose
  heading is SECTION instead of in its place. Used by the opening example, which searches the
  table that "Getting started" creates.
"""

import dataclasses
import re
import subprocess

import psycopg
import pytest

from conftest import APP_ROLE, PG_BIN, ROOT
from test_shard import _shard_server

README = ROOT / "README.md"
DB = "pgvision_readme"
COORD_DB = "pgvision_readme_coord"
SHARD_DB = "images"
EXAMPLE_ROLE = "alice"
SHARDS = ("shard1", "shard2", "shard3")
SCALE_OUT = "Scale-out"

readme_shard1_proc = _shard_server()
readme_shard2_proc = _shard_server()
readme_shard3_proc = _shard_server()


@dataclasses.dataclass
class Block:
    line: int        # line of the opening fence in README.md
    lang: str
    text: str
    section: str     # the "## " heading it is under
    heading: str     # the nearest heading of any level
    role: str = "postgres"
    after: str = None


def readme_blocks(text=None):
    """The sql and psql blocks of README.md, in order, with their markers."""
    lines = (text if text is not None else README.read_text()).splitlines()
    blocks, section, heading, marker, i = [], "", "", None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(#{1,6})\s+(.*?)\s*$", line)
        if m:
            heading = m.group(2)
            if len(m.group(1)) == 2:
                section = heading
        fence = re.match(r"^```\s*([\w-]*)\s*$", line)
        if fence:
            start, body, i = i + 1, [], i + 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if fence.group(1) in ("sql", "psql"):
                b = Block(start, fence.group(1), "\n".join(body) + "\n", section, heading)
                for key, value in re.findall(r"(as|runs after):\s*([^;>]+?)\s*(?=;|-->)", marker or ""):
                    if key == "as":
                        b.role = value
                    else:
                        b.after = value
                blocks.append(b)
            marker = None
        elif line.strip().startswith("<!--"):
            marker = line
        elif line.strip():
            marker = None
        i += 1
    return blocks


def in_order(blocks):
    """README order, with each ``runs after`` block moved behind the last block of its section."""
    later = [b for b in blocks if b.after]
    ordered = [b for b in blocks if not b.after]
    for b in later:
        last = max((k for k, o in enumerate(ordered) if b.after in (o.heading, o.section)), default=None)
        assert last is not None, f"README.md:{b.line}: no block under a heading {b.after!r}"
        ordered.insert(last + 1, b)
    return ordered


def dsn(proc, dbname, user="postgres"):
    return f"host={proc.host} port={proc.port} user={user} dbname={dbname}"


def run_blocks(server, dbname, blocks, workdir, substitute=lambda text: text):
    """Runs the blocks in order; returns {line: psql output}. Every block runs, also after one
    failed (a later failure may follow from an earlier one): the test fails listing them all."""
    outputs, failures = {}, []
    for b in blocks:
        if b.role != "postgres":
            with psycopg.connect(dsn(server, dbname), autocommit=True) as c:
                c.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{b.role}"')
                c.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{b.role}"')
        path = workdir / f"readme-{b.line}.{b.lang}"
        path.write_text(substitute(b.text))
        p = subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-f", str(path), dsn(server, dbname, b.role)],
            cwd=workdir, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
        out = p.stdout + p.stderr
        if p.returncode != 0:
            failures.append(f"README.md:{b.line} ({b.heading}), run as {b.role}, failed:\n{b.text}"
                            f"--- psql:\n{out}")
        outputs[b.line] = out
    if failures:
        pytest.fail(f"{len(failures)} of {len(blocks)} README blocks failed\n\n" + "\n\n".join(failures),
                    pytrace=False)
    return outputs


@pytest.fixture(scope="module")
def example_role(server):
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        for db in (DB, COORD_DB):
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [EXAMPLE_ROLE]).fetchone():
            c.execute(f"CREATE ROLE {EXAMPLE_ROLE} LOGIN")
    yield EXAMPLE_ROLE
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        for db in (DB, COORD_DB):
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        c.execute(f"DROP ROLE IF EXISTS {EXAMPLE_ROLE}")


def fresh_database(server, name):
    with psycopg.connect(dsn(server, "postgres"), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name}")


def test_markers_are_parsed():
    blocks = readme_blocks("# t\n## A\n<!-- as: app -->\n```psql\n\\echo 1\n```\n\n"
                           "<!-- runs after: B -->\n```sql\nSELECT 2;\n```\n## B\n```sql\nSELECT 3;\n```\n"
                           "```text\nnot run\n```\n")
    assert [(b.lang, b.role, b.after, b.section) for b in blocks] == [
        ("psql", "app", None, "A"), ("sql", "postgres", "B", "A"), ("sql", "postgres", None, "B")]
    assert [b.text for b in in_order(blocks)] == ["\\echo 1\n", "SELECT 3;\n", "SELECT 2;\n"]


def test_readme_sql_blocks_run_in_order(server, example_role, tmp_path):
    blocks = [b for b in readme_blocks() if b.section != SCALE_OUT]
    assert blocks and any(re.search(r"CREATE EXTENSION pgvision CASCADE", b.text) for b in blocks)
    assert {b.role for b in blocks} <= {"postgres", APP_ROLE, EXAMPLE_ROLE}, "as: names a role this test does not make"
    fresh_database(server, DB)
    outputs = run_blocks(server, DB, in_order(blocks), tmp_path)

    # a few results a reader of those blocks relies on
    by_text = {b.line: b.text for b in blocks}
    classify = [line for line, t in by_text.items() if "pgvision.classify(" in t and "eagle.jpg" in t]
    assert classify and all("bald eagle" in outputs[line] for line in classify)
    # the opening example and Getting started's search, by the dog photo, with no WHERE
    first = [line for line, t in by_text.items() if "dog.jpg" in t and "WHERE" not in t
             and re.search(r"FROM images\b.*\s+ORDER BY (distance|feature <-> q)\s+LIMIT", t, re.S)]
    assert len(first) >= 2, "README: the opening example or Getting started's search is gone"
    for line in first:
        row = next(r for r in outputs[line].splitlines() if re.match(r"^\s*\d+ \|", r))
        assert row.split("|")[0].strip() == "1", (line, outputs[line])  # the dog photo finds itself
    # create_index's example says which index its defaults build: the name it returned says so too
    made = [(line, m) for line, t in by_text.items()
            for m in [re.search(r"create_index\('images', 'feature'\);\s*-- (\w+), (\w+)", t)] if m]
    assert made, "README: create_index's defaults example is gone"
    for line, m in made:
        name = re.search(r"^ (images_feature_\w+_idx)$", outputs[line], re.M).group(1)
        assert f"_{m.group(1).lower()}_{m.group(2).lower()}_" in name, (line, m.group(0), name)
    lo = [b for b in blocks if "\\lo_import" in b.text]
    assert lo, "README: the \\lo_import route is gone"
    assert all(b.role != "postgres" for b in lo), "the \\lo_import route is for roles without superuser"
    with psycopg.connect(dsn(server, DB), autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0] == 0  # \lo_unlink ran


@pytest.fixture(scope="module")
def readme_shards(readme_shard1_proc, readme_shard2_proc, readme_shard3_proc):
    procs = dict(zip(SHARDS, (readme_shard1_proc, readme_shard2_proc, readme_shard3_proc)))
    for proc in procs.values():
        with psycopg.connect(dsn(proc, "postgres"), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {SHARD_DB} WITH (FORCE)")
            c.execute(f"CREATE DATABASE {SHARD_DB}")
        with psycopg.connect(dsn(proc, SHARD_DB), autocommit=True) as c:
            c.execute("CREATE EXTENSION pgvision CASCADE")  # "On every shard, as for a single server"
    return procs


def test_readme_scale_out_blocks_run_against_shards(server, example_role, readme_shards, tmp_path):
    blocks = [b for b in readme_blocks() if b.section == SCALE_OUT]
    assert blocks
    address = re.compile(r"host '(shard\d+)\.example\.com', port '5432'")
    named = {m.group(1) for b in blocks for m in address.finditer(b.text)}
    assert named == set(SHARDS), f"README's CREATE SERVER blocks name {sorted(named)}, the suite has {SHARDS}"
    assert all(f"dbname '{SHARD_DB}'" in m.string[m.end():m.end() + 40]
               for b in blocks for m in address.finditer(b.text))

    def substitute(text):
        return address.sub(lambda m: f"host '{readme_shards[m.group(1)].host}', "
                                     f"port '{readme_shards[m.group(1)].port}'", text)

    fresh_database(server, COORD_DB)
    run_blocks(server, COORD_DB, in_order(blocks), tmp_path, substitute)
    with psycopg.connect(dsn(server, COORD_DB), autocommit=True) as c:
        assert [r[0] for r in c.execute("SELECT server FROM pgvision.shards ORDER BY 1")] == list(SHARDS)
        rows = c.execute("SELECT count(*), count(feature) FROM images").fetchone()
    assert rows[0] > 0 and rows[0] == rows[1]  # the loaded rows were embedded on their shards
    spread = []
    for proc in readme_shards.values():
        with psycopg.connect(dsn(proc, SHARD_DB), autocommit=True) as c:
            spread.append(c.execute("SELECT count(*) FROM public.images").fetchone()[0])
    assert sum(spread) == rows[0] and all(spread), spread  # stored on the shards, on each of them
