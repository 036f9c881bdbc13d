#!/usr/bin/env bash
# Build the docs site, serve it locally, and save PNG screenshots of the home page and a spec
# page (spec.attention, whose formulas must render) with headless Chromium.
#
#   bash scripts/screenshots.sh [OUT_DIR]          # default: build/screenshots
#
# Needs chromium (Debian: apt-get install -y chromium) and the project's .venv (scripts/setup.sh).
# Prints the PNG paths; exit 2 when chromium is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/screenshots}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
    echo "error: chromium not found (apt-get install -y chromium)" >&2
    exit 2
fi
site="$(mktemp -d)"
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$site"; }
trap cleanup EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --quiet --site-dir "$site"
port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
.venv/bin/python -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do  # wait until the server answers
    .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
    sleep 0.1
done
mkdir -p "$out"
shoot() {  # shoot PAGE NAME HEIGHT
    "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
        --user-data-dir="$site/.chromium" --window-size="1280,$3" \
        --screenshot="$out/$2.png" "http://127.0.0.1:$port/$1" >/dev/null 2>&1
    echo "$out/$2.png"
}
shoot "" home 1300
shoot "reference/attention/" spec-attention 1400
