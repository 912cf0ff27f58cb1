#!/usr/bin/env bash
# The default model's VAE decoder fine-tune (tools/default_model/toy_decoder_finetune.py) on the lent GPU; the new
# vae/ and its report come back in $OUT. Usage: bash bench/toy_decoder_finetune_on_device.sh [extra args]
set -uo pipefail
source bench/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m tools.default_model.toy_decoder_finetune --device cuda --workers 14 --out "$OUT" "$@" 2>&1 | grep -v torchvision
