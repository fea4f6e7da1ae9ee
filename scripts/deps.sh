#!/bin/bash
# Installs what pgvision needs from Debian: the PostgreSQL server, PL/Python, the build
# tools, the data sets, headless Chromium for the web page's test, and pgvector (built from
# Debian's source package when no binary package of a recent enough version exists for the
# server's major version).
# Idempotent: a second run with nothing missing only checks and returns.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PGVECTOR_MIN="${PGVECTOR_MIN:-0.8.0}"   # iterative index scans and halfvec need 0.8
STATE="${PGVISION_STATE:-/var/cache/pgvision}"
export DEBIAN_FRONTEND=noninteractive

packages=(
  "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR" "postgresql-contrib"
  "postgresql-plpython3-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR"
  build-essential dpkg-dev python3 python3-venv python3-dev
  dataset-fashion-mnist darknet
  # photos and artwork of several sizes and shapes, for the copy and duplicate benchmarks
  # and the mixed collection of the search benchmark (bench/mixed.py)
  mate-backgrounds ukui-wallpapers lomiri-wallpapers-20.04 gnome-backgrounds sway-backgrounds
  chromium chromium-driver   # the browser test of `pgvision serve` (tests/test_web.py)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
sharedir="$("$PG_CONFIG" --sharedir)"

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

installed_pgvector() {
  local f
  f="$(ls "$sharedir"/extension/vector.control 2>/dev/null || true)"
  [ -n "$f" ] && sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$f"
}

# pgvision.so is built against pgvector's header (the layout of a vector), which pgvector's
# own `make install` puts here
header="$("$PG_CONFIG" --includedir-server)/extension/vector/vector.h"
have="$(installed_pgvector || true)"
if [ -n "$have" ] && version_ge "$have" "$PGVECTOR_MIN" && [ -f "$header" ]; then
  echo "deps: pgvector $have present"
  exit 0
fi

# A binary package for this major version wins when it is recent enough.
bin_pkg="postgresql-$PG_MAJOR-pgvector"
cand="$(apt-cache policy "$bin_pkg" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
if [ -n "$cand" ] && [ "$cand" != "(none)" ] && version_ge "${cand%%-*}" "$PGVECTOR_MIN"; then
  echo "deps: installing $bin_pkg $cand"
  apt-get install -y -qq "$bin_pkg" >/dev/null
  [ -f "$header" ] && exit 0
  echo "deps: $bin_pkg has no $header"
fi

# Otherwise build Debian trixie's source package with PGXS. Its apt state lives in a
# folder of our own so the machine's apt configuration stays untouched.
echo "deps: building pgvector from Debian's source package"
mkdir -p "$STATE/apt/sources.list.d" "$STATE/apt/lists/partial" "$STATE/apt/cache/archives/partial" "$STATE/src"
cat > "$STATE/apt/sources.list.d/trixie-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_own=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$STATE/apt/sources.list.d"
         -o "Dir::State::Lists=$STATE/apt/lists" -o "Dir::Cache=$STATE/apt/cache")
apt-get "${apt_own[@]}" update -qq
rm -rf "$STATE/src"/pgvector-*
(cd "$STATE/src" && apt-get "${apt_own[@]}" source -qq --download-only pgvector >/dev/null \
  && dpkg-source -x --no-check pgvector_*.dsc >/dev/null)
srcdir="$(ls -d "$STATE/src"/pgvector-*/ | head -1)"
make -s -C "$srcdir" PG_CONFIG="$PG_CONFIG" >/dev/null
make -s -C "$srcdir" PG_CONFIG="$PG_CONFIG" install >/dev/null
echo "deps: pgvector $(installed_pgvector) installed"
