#!/usr/bin/env bash
# Download into bench/wheels/ the wheels bench/device_check.sh installs on a GPU machine that has
# no network: gymnasium with its box2d extra (the gymnasium requirement is read from
# pyproject.toml), pytest and hypothesis, and everything they depend on, for CPython 3.12 on
# x86-64 Linux (about 34 MB; numpy is among them, and is installed only where it is missing).
# Run it on a machine with PyPI access; then pass bench/wheels along with the checkout (it is
# git-ignored: name it in the device tool's `carry`, or copy it).
#
#   bench/fetch_device_wheels.sh                 # CPython 3.12
#   DEVICE_PYTHON=3.13 bench/fetch_device_wheels.sh
#
# It ends by resolving the same requirements from bench/wheels alone (pip install --dry-run
# --no-index, as for that interpreter), so a set that lacks a wheel fails here, not there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
VERSION=${DEVICE_PYTHON:-3.12}
DEST=bench/wheels
TARGET=(--only-binary=:all: --python-version "$VERSION" --implementation cp --abi "cp${VERSION/./}"
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux_2_28_x86_64)
GYM=$("$PY" - <<'EOF'
import re
text = open("pyproject.toml", encoding="utf-8").read()
print(re.search(r'"(gymnasium\[box2d\][^"]*)"', text).group(1))
EOF
)
REQS=("$GYM" pytest hypothesis)
mkdir -p "$DEST"
echo "downloading ${REQS[*]} for CPython $VERSION into $DEST"
"$PY" -m pip download -q --disable-pip-version-check "${TARGET[@]}" -d "$DEST" "${REQS[@]}"
CHECK=$(mktemp -d)
trap 'rm -rf "$CHECK"' EXIT
"$PY" -m pip install -q --disable-pip-version-check --dry-run --ignore-installed --no-index \
    --find-links "$DEST" "${TARGET[@]}" --target "$CHECK" "${REQS[@]}"
ls "$DEST"
echo "complete: ${REQS[*]} resolve from $DEST alone for CPython $VERSION ($(du -sh "$DEST" | cut -f1))"
