#!/usr/bin/env bash
# The default model's VAE decoder fine-tune (webui/eval/toy_decoder_finetune.py) on the lent GPU; the new
# vae/ and its report come back in $OUT. Usage: bash bench/toy_decoder_finetune_on_device.sh [extra args]
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m webui.eval.toy_decoder_finetune --device cuda --workers 14 --out "$OUT" "$@" 2>&1 | grep -v torchvision
