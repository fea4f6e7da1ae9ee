"""Assembles BENCHMARKS.md from the sections the benchmarks wrote under bench/results.

    build/venv/bin/python bench/report.py

Each bench/NAME.py leaves NAME.md (its section, with the exact command) and NAME.json (the
figures, the machine and when). A section whose benchmark has not run yet is listed as
missing rather than left out silently.
"""

import json
import re

import common

ORDER = [("inference", "1. Inference overhead"), ("ingest", "2. End-to-end ingest"),
         ("search", "3. Search"), ("quality", "4. Retrieval quality"),
         ("preprocess", "4b. Retrieval quality on real photos"),
         ("memory", "5. Cold start and memory"), ("int8", "6. INT8 models"),
         ("projection", "7. Models learned from your table"),
         ("copies", "8. Copies and duplicates"),
         ("shards", "Scale-out")]

HEADER = """# Benchmarks

Every figure below was printed by a script in `bench/` on the machine described with it,
and this page was assembled from their output by `bench/report.py`. Reproduce all of it
with

    make bench

(sets everything up, then runs `bench/inference.py`, `ingest.py`, `search.py`,
`quality.py`, `preprocess.py`, `memory.py`, `int8.py`, `projection.py`, `copies.py` and `shards.py` in turn, each on its own throwaway server under
/var/tmp/pgvision-bench, and rebuilds this page), or one of them with
`make bench BENCH=search`. Comparisons are measured in one run, the contenders alternating
on the same images with the same thread count; the figures are medians, and ratios are
taken between medians of the same run. The machine is shared, so absolute times move from
run to run; the ratios are what to compare. Benchmarks are not part of `make test`.
"""


def link_plots(markdown):
    """Plots are written beside the sections; this page sits at the top of the tree."""
    return re.sub(r"\]\((?!https?:|/|bench/)([^)]+\.png)\)", r"](bench/results/\1)", markdown)


def main():
    parts = [HEADER]
    machines = {}
    for name, title in ORDER:
        md = common.RESULTS / f"{name}.md"
        js = common.RESULTS / f"{name}.json"
        if not md.exists() or not js.exists():
            parts.append(f"## {title}\n\nNot measured yet: run `make bench BENCH={name}`.\n")
            continue
        data = json.loads(js.read_text())
        m = data.get("machine", {})
        machines[name] = m
        parts.append(link_plots(md.read_text().strip()) + "\n\n"
                     f"<sub>Measured {data.get('measured', '?')} with `{data.get('command', '?')}` "
                     f"on {m.get('cores', '?')} × {m.get('cpu', '?')}{vnni(m)}, {m.get('memory_mib', '?')} MiB, "
                     f"{m.get('postgresql', '?')}, onnxruntime {m.get('onnxruntime', '?')}.</sub>\n")
    (common.ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote BENCHMARKS.md ({len(machines)} of {len(ORDER)} sections measured)")


def vnni(m):
    """Whether the CPU had VNNI, where the results say."""
    return "" if "vnni" not in m else " (VNNI)" if m["vnni"] else " (no VNNI)"


if __name__ == "__main__":
    main()
