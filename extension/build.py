"""Builds the extension's SQL scripts from sql/ and released/.

    python3 build.py --runtime-path DIR [SCRIPT]   # one script, to stdout
    python3 build.py --scripts                     # the scripts `make install` builds
    python3 build.py --freeze                      # at a release: keep its install script

SCRIPT (pgvision--VERSION.sql, the current version's install script, by default) is one of:

- pgvision--VERSION.sql: sql/incremental then sql/idempotent, in name order;
- pgvision--OLD.sql: the install script of released version OLD, kept in released/;
- pgvision--OLD--VERSION.sql: the upgrade from OLD: the incremental files OLD did not have,
  then every idempotent file, between released/upgrade-begin.sql and upgrade-end.sql.

Every PL/Python body's @PREAMBLE@ becomes preamble.py (in released scripts, the preamble
they shipped with is replaced by the current one), and @RUNTIME_PATH@ becomes DIR in every
script, the released ones too: all versions' SQL calls the one installed runtime folder
(the pgvision.runtime_path setting, in postgresql.conf, overrides it).
"""

import argparse
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
RELEASED = HERE / "released"
SECTION = re.compile(r"^-- ((?:incremental|idempotent)/[^\n]+\.sql)\n", re.M)


class BuildError(Exception):
    pass


def version():
    """default_version in pgvision.control: the one place the version is written."""
    text = (HERE / "pgvision.control").read_text()
    return re.search(r"default_version\s*=\s*'([^']+)'", text).group(1)


def version_key(v):
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.-]", v))


def sources(folder):
    return sorted((HERE / "sql" / folder).glob("*.sql"))


def preamble():
    return (HERE / "preamble.py").read_text().rstrip()


# The preamble as a released script holds it, from its first line to its last.
OLD_PREAMBLE = re.compile(r"^# pgvision preamble: .*?^from pgvision_runtime import sqlapi as pv$",
                          re.M | re.S)


def render(path):
    return path.read_text().replace("@PREAMBLE@", preamble())


def released_script(old):
    """A released install script as installed: its PL/Python bodies get the current
    preamble, as they get the current runtime folder. The preamble decides which code the
    server imports, so a fix to it reaches every version's functions."""
    text = (RELEASED / f"pgvision--{old}.sql").read_text()
    return OLD_PREAMBLE.sub(lambda m: preamble(), text)


def section(path):
    return f"\n-- {path.parent.name}/{path.name}\n" + render(path)


def install_script():
    parts = [f"-- pgvision {version()}: built by extension/build.py from extension/sql; do not edit\n",
             "\\echo Use \"CREATE EXTENSION pgvision\" to load this file. \\quit\n"]
    parts += [section(p) for folder in ("incremental", "idempotent") for p in sources(folder)]
    return "".join(parts)


def released_versions():
    """Released versions, oldest first, from released/pgvision--VERSION.sql."""
    found = [p.name[len("pgvision--"):-len(".sql")] for p in RELEASED.glob("pgvision--*.sql")]
    return sorted((v for v in found if "--" not in v), key=version_key)


def released_incremental(old):
    """The incremental files released version ``old`` shipped, by name, with their text as
    shipped. Its install script holds them, one section each, as install_script wrote it."""
    pieces = SECTION.split((RELEASED / f"pgvision--{old}.sql").read_text())
    files = {}
    for i in range(1, len(pieces), 2):
        folder, name = pieces[i].split("/")
        body = pieces[i + 1]
        if i + 2 < len(pieces):
            body = body[:-1]  # the blank line before the next section's header
        if folder == "incremental":
            files[name] = body
    return files


def check_released_incremental(old, shipped):
    """An incremental file runs once: after a release it never changes, or fresh installs and
    upgraded ones would differ."""
    current = {p.name: p for p in sources("incremental")}
    for name, text in shipped.items():
        if name not in current:
            raise BuildError(f"sql/incremental/{name} was released in {old} and is gone; "
                             "fresh installs still need it")
        if render(current[name]) != text:
            raise BuildError(f"sql/incremental/{name} was released in {old} and has changed since; "
                             "put the change in a new incremental file and restore this one "
                             f"(released/pgvision--{old}.sql has it as shipped)")


def upgrade_script(old):
    new = version()
    shipped = released_incremental(old)
    check_released_incremental(old, shipped)
    parts = [f"-- pgvision {old} to {new}: built by extension/build.py from extension/sql; do not edit\n",
             f"\\echo Use \"ALTER EXTENSION pgvision UPDATE TO '{new}'\" to load this file. \\quit\n\n",
             (RELEASED / "upgrade-begin.sql").read_text()]
    parts += [section(p) for p in sources("incremental") if p.name not in shipped]
    parts += [section(p) for p in sources("idempotent")]
    parts.append("\n" + (RELEASED / "upgrade-end.sql").read_text())
    return "".join(parts)


def older_releases():
    current = version_key(version())
    return [v for v in released_versions() if version_key(v) < current]


def scripts():
    """What make builds and installs: the current install script, each older released
    version's install script (so CREATE EXTENSION ... VERSION works and upgrades can be
    tested) and an upgrade from each of them straight to the current version."""
    cur = version()
    old = older_releases()
    return [f"pgvision--{cur}.sql"] + [f"pgvision--{v}.sql" for v in old] + \
           [f"pgvision--{v}--{cur}.sql" for v in old]


def script(name):
    cur = version()
    m = re.fullmatch(r"pgvision--(.+?)(?:--(.+))?\.sql", name)
    if not m:
        raise BuildError(f"not a pgvision script name: {name}")
    src, dst = m.groups()
    if dst is None and src == cur:
        return install_script()
    if dst is None and src in older_releases():
        return released_script(src)
    if dst == cur and src in older_releases():
        return upgrade_script(src)
    raise BuildError(f"{name}: no such script; this tree builds {', '.join(scripts())}")


def freeze():
    """Keeps the current version's install script, placeholder and all, in released/: the
    upgrade from it is built from the incremental files it names."""
    path = RELEASED / f"pgvision--{version()}.sql"
    text = install_script()
    if path.exists() and path.read_text() != text:
        raise BuildError(f"{path.name} is already released and differs from what sql/ builds now; "
                         "a released script never changes: bump default_version in pgvision.control")
    path.write_text(text)
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("script", nargs="?")
    ap.add_argument("--runtime-path")
    ap.add_argument("--print-version", action="store_true")
    ap.add_argument("--scripts", action="store_true")
    ap.add_argument("--freeze", action="store_true")
    args = ap.parse_args()
    try:
        if args.print_version:
            print(version())
        elif args.scripts:
            print(" ".join(scripts()))
        elif args.freeze:
            print(freeze())
        else:
            if not args.runtime_path:
                ap.error("--runtime-path is required to build a script")
            text = script(args.script or f"pgvision--{version()}.sql")
            sys.stdout.write(text.replace("@RUNTIME_PATH@", args.runtime_path))
    except BuildError as e:
        sys.exit(f"build.py: {e}")
