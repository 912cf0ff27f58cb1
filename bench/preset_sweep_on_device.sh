#!/usr/bin/env bash
# bench/training_preset_sweep.py on the lent GPU. Usage: bash bench/preset_sweep_on_device.sh VARIANTS.json [args]
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
variants=$1; shift
python3 bench/training_preset_sweep.py "$variants" --device cuda --out "$OUT/sweep.jsonl" "$@" 2>&1 | grep -v -i "torchvision\|warn"
