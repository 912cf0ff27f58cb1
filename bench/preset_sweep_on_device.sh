#!/usr/bin/env bash
# bench/training_preset_sweep.py on the lent GPU. Usage: bash bench/preset_sweep_on_device.sh VARIANTS.json [args]
set -uo pipefail
source bench/device_env.sh
variants=$1; shift
python3 bench/training_preset_sweep.py "$variants" --device cuda --out "$OUT/sweep.jsonl" "$@" 2>&1 | grep -v -i "torchvision\|warn"
