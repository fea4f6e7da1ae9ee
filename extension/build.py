"""Builds the extension's install script from sql/incremental and sql/idempotent.

    python3 build.py --runtime-path DIR > pgvision--VERSION.sql

Every PL/Python body's @PREAMBLE@ becomes preamble.py, with @RUNTIME_PATH@ the default
runtime folder (the pgvision.runtime_path GUC overrides it).
"""

import argparse
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent


def version():
    text = (HERE / "pgvision.control").read_text()
    return re.search(r"default_version\s*=\s*'([^']+)'", text).group(1)


def build(runtime_path):
    preamble = (HERE / "preamble.py").read_text().replace("@RUNTIME_PATH@", runtime_path).rstrip()
    parts = [f"-- pgvision {version()}: built by extension/build.py from extension/sql; do not edit\n",
             "\\echo Use \"CREATE EXTENSION pgvision\" to load this file. \\quit\n"]
    for folder in ("incremental", "idempotent"):
        for path in sorted((HERE / "sql" / folder).glob("*.sql")):
            parts.append(f"\n-- {folder}/{path.name}\n")
            parts.append(path.read_text().replace("@PREAMBLE@", preamble))
    return "".join(parts)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime-path", required=True)
    ap.add_argument("--print-version", action="store_true")
    args = ap.parse_args()
    print(version() if args.print_version else build(args.runtime_path), end="\n" if args.print_version else "")
