#!/usr/bin/env bash
# The project's test command (see README): on a fresh Debian machine, as root, it installs the
# Debian packages the tests drive (skipping apt entirely when all are present), then checks
# formatting, runs clippy with warnings as errors, and runs every test of the workspace.
#
# Tests run in the debug profile: on 2 cores a debug build plus the test run is faster than a
# release build (thin LTO) of the same tests, and the tests measure behaviour, not speed.
# KEEPCACHED_TEST_PROFILE=release switches to release builds.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(memcached libmemcached-tools php-cli php-memcached php-memcache nutcracker keepalived python3
    iproute2 tcpdump systemd python3-prometheus-client)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    echo "== installing ${missing[*]}"
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
        "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (rustup, stable toolchain >= 1.95, the version CI builds with) first" >&2
    exit 1
fi
if command -v rustup >/dev/null; then
    for component in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
            rustup component add "$component"
        fi
    done
fi

profile=()
if [ "${KEEPCACHED_TEST_PROFILE:-debug}" = release ]; then
    profile=(--release)
fi

start=$SECONDS
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast "${profile[@]}"
echo "== all checks passed in $((SECONDS - start)) s"
