#!/bin/bash
# venv.sh DIR PIP-INSTALL-ARGS...
# Creates (once) a virtual environment of Debian's /usr/bin/python3, the interpreter
# PL/Python runs, and pip-installs the arguments into it. A stamp holding the hash of the
# arguments and of every file or folder they name makes a second run with nothing changed
# return at once.
set -euo pipefail
dir="$1"; shift
stamp="$dir/.pgvision-stamp-$(printf "%s\n" "$@" | sha256sum | cut -c1-12)"

hash_inputs() {
  {
    printf '%s\n' "$@"
    for a in "$@"; do
      a="${a#-r}"; a="${a#-e}"
      if [ -f "$a" ]; then cat "$a"
      elif [ -d "$a" ]; then find "$a" -type f \( -name '*.py' -o -name '*.toml' -o -name '*.txt' \) \
          -not -path '*/__pycache__/*' -not -path '*.egg-info*' | sort | xargs cat; fi
    done
  } | sha256sum | cut -d' ' -f1
}

want="$(hash_inputs "$@")"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/bin/python" ]; then
  exit 0
fi
if [ ! -x "$dir/bin/python" ]; then
  /usr/bin/python3 -m venv "$dir"
fi
"$dir/bin/python" -m pip install -q --disable-pip-version-check --no-input "$@"
echo "$want" > "$stamp"
echo "venv: $dir ready"
