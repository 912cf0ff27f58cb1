#!/usr/bin/env bash
# Fine-tune the default model's text encoder + UNet on varied captions (issue 23) on the lent GPU, in ONE call:
# the VAE and its latent scale are kept (--vae-steps 0 --init-from), the run stops at its time budget, and the
# model comes back in $OUT as toy.tar.part-* (15 MB parts: the device tool's per-file limit) with its log,
# packed as soon as it is saved, before the script's own GPU evaluation.
# Reassemble here with: cat toy.tar.part-* | tar x -C DIR
# Usage (from the folder that holds webui/, bench/ and .whl/):
#   MODEL=path/to/sd-studio-toy [BUDGET=8 BATCH=512 UNET_LR=3e-4] bash bench/finetune_toy_on_device.sh [more training args]
# The shipped model (2026-12-05): a first call with MODEL=the previous model, BUDGET=8, BATCH=512 (2,473 steps), then
# a second call from its result with BUDGET=8.5, BATCH=1024 (2,992 steps); see the model card.
set -uo pipefail
# Carried wheels only where the machine lacks the package or has one too old for diffusers 0.42.1: replacing a
# newer huggingface_hub would break the machine's own transformers.
python3 - > /tmp/wheels.txt <<'PY'
import glob
from importlib.metadata import PackageNotFoundError, version
minimum = {"huggingface_hub": (1, 32), "safetensors": (0, 8)}
for wheel in sorted(glob.glob(".whl/*.whl")):
    name = wheel.split("/")[-1].split("-")[0]
    try:
        have = tuple(int(part) for part in version(name).split(".")[:2])
    except PackageNotFoundError:
        have = None
    if have is None or name not in minimum or have < minimum[name]:
        print(wheel)
PY
echo "installing: $(tr '\n' ' ' < /tmp/wheels.txt)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $(cat /tmp/wheels.txt) || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
rm -rf /tmp/toy; mkdir -p /tmp/toy
python3 -m tools.default_model.toy_model_training --out /tmp/toy/model --init-from "${MODEL:?set MODEL}" --vae-steps 0 \
    --images ${IMAGES:-60000} --caption-variants ${CAPTIONS:-4} --unet-steps ${UNET_STEPS:-100000} \
    --batch ${BATCH:-512} --unet-lr ${UNET_LR:-3e-4} --workers 14 --time-budget-minutes ${BUDGET:-8} \
    --eval-prompts ${EVAL_PROMPTS:-100} "$@" > /tmp/toy/train.log 2>&1 < /dev/null &
trainer=$!
while kill -0 $trainer 2>/dev/null && [ ! -f /tmp/toy/model/training_report.json ]; do sleep 3; done
sleep 2
grep -v -i "torchvision\|Loading weights\|shards" /tmp/toy/train.log | tail -30
[ -f /tmp/toy/model/training_report.json ] || { cp /tmp/toy/train.log "$OUT/"; echo "no model saved"; exit 3; }
tar cf - -C /tmp/toy/model . | split -b 15M - "$OUT/toy.tar.part-"
for _ in $(seq 1 ${EVAL_WAIT:-40}); do kill -0 $trainer 2>/dev/null || break; sleep 3; done
grep -i "evaluation" /tmp/toy/train.log
cp /tmp/toy/train.log /tmp/toy/model/training_report.json "$OUT/"
ls -la "$OUT"
