#!/usr/bin/env bash
# Builds shardline's Docker images with no registry access: every image is FROM scratch and
# holds a root file system assembled here from the host's build output:
#   gateway, shard-server, manager: target/release/<bin> (stripped) + exactly the shared
#       libraries `ldd` reports + the dynamic loader (+ an empty /tmp and /data);
#   nats: the pinned static nats-server from ./.tools/bin (scripts/install-nats.sh) + its config.
# Run `cargo build --release` (and scripts/install-nats.sh) first; `make images` does both.
#
# Images: shardline-<component>:<version> and :latest, labelled io.shardline.image=<component>
# (what `make clean` removes) and with the OCI title/version labels.
#
# Usage: docker/build-images.sh [component...]   (default: all four)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
BIN_DIR="${SHARDLINE_RELEASE_DIR:-$ROOT/target/release}"
NATS_BIN="${NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}"
STAGE="$ROOT/target/docker"
components=("$@")
((${#components[@]})) || components=(nats shard-server manager gateway)

say() { echo "images: $*"; }

# stage_binary BIN DIR: BIN, its libraries and the loader under DIR/rootfs.
stage_binary() {
    local bin="$1" dir="$2" src="$BIN_DIR/$1" lib
    [[ -x "$src" ]] || { say "$src not found: run \`cargo build --release\` first" >&2; exit 1; }
    mkdir -p "$dir/rootfs/usr/local/bin" "$dir/rootfs/tmp" "$dir/data"
    chmod 1777 "$dir/rootfs/tmp"
    cp "$src" "$dir/rootfs/usr/local/bin/$bin"
    if command -v strip >/dev/null 2>&1; then strip "$dir/rootfs/usr/local/bin/$bin"; fi
    # ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader
    # "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no file.
    while read -r lib; do
        [[ -n "$lib" ]] || continue
        mkdir -p "$dir/rootfs$(dirname "$lib")"
        cp -L "$lib" "$dir/rootfs$lib"
    done < <(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}

build() {
    local component="$1" dir="$STAGE/$1"
    rm -rf "$dir"
    mkdir -p "$dir"
    case "$component" in
        nats)
            [[ -x "$NATS_BIN" ]] || { say "$NATS_BIN not found: run scripts/install-nats.sh" >&2; exit 1; }
            mkdir -p "$dir/rootfs/usr/local/bin" "$dir/rootfs/etc/nats" "$dir/rootfs/tmp" "$dir/data"
            chmod 1777 "$dir/rootfs/tmp"
            cp "$NATS_BIN" "$dir/rootfs/usr/local/bin/nats-server"
            cp docker/nats/nats.conf "$dir/rootfs/etc/nats/nats.conf"
            ;;
        *) stage_binary "$component" "$dir" ;;
    esac
    # Quiet unless it fails (the legacy builder also prints a deprecation notice on stderr).
    local out
    if ! out="$(docker build --quiet \
        --file "docker/$component.Dockerfile" \
        --build-arg "VERSION=$VERSION" \
        --tag "shardline-$component:$VERSION" \
        --tag "shardline-$component:latest" \
        "$dir" 2>&1 >/dev/null)"; then
        echo "$out" >&2
        say "building shardline-$component failed" >&2
        exit 1
    fi
    say "shardline-$component:$VERSION $(docker image inspect --format '{{.Size}}' "shardline-$component:$VERSION" | awk '{printf "%.1f MB", $1/1e6}')"
}

for c in "${components[@]}"; do
    case "$c" in
        nats | shard-server | manager | gateway) build "$c" ;;
        *) say "unknown component $c (nats, shard-server, manager, gateway)" >&2; exit 2 ;;
    esac
done
