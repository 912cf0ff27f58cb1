#!/usr/bin/env bash
# The toy canny ControlNet on the lent GPU machine, in ONE call of at most 9 minutes: train it
# (tools/controlnet/train_toy_controlnet.py, --time-budget-minutes ${BUDGET:-6} counted from its start, rendering
# included), then measure it through the app's own txt2img path (sdstudio_eval/controlnet_fidelity.py) with
# whatever time is left before the 8.5-minute mark. Writes to $OUT:
#   control_sdstudio_toy_canny.safetensors, control_sdstudio_toy_canny.training.json,
#   controlnet_fidelity.json, controlnet_fidelity.md, train_toy_controlnet.log
# Wheels carried in .whl/ (bench/device_env.sh installs them to /tmp/site); the machine's image has torch,
# transformers, scipy, numpy, pillow, safetensors, huggingface_hub, anyio, but no diffusers and no fastapi (the
# shipped controlnet extension registers its API routes with fastapi even in a headless app; gradio is not needed):
#   pip download --no-deps -d .whl diffusers==0.42.1 importlib_metadata lazy_importer peft==0.21.2 accelerate==1.16.0
#   pip download --no-deps -d .whl --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 fastapi==0.165.0 starlette==1.10.0 \
#       pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 opentelemetry-api==1.45.3
# Run on the device:   bash tools/controlnet/train_toy_controlnet_on_device.sh        (carry: .whl)
# CPU check here:      DEVICE=cpu SMOKE=1 OUT=/tmp/cn-smoke bash tools/controlnet/train_toy_controlnet_on_device.sh
# Knobs: BUDGET (training minutes, default 6), TOTAL (seconds by which evaluation stops starting scenes, 510),
# IMAGES (training renders, 40000), BATCH (256 on CUDA), SCENES (evaluation scenes, at most; 200), WORKERS (app
# workers sharing the GPU during the evaluation, 3), RENDER_WORKERS (processes rendering the training set, 14),
# TRAIN_ARGS (more training flags, e.g. "--hint-init random"). Two recipes side by side on one GPU: give each its own
# OUT and half the RENDER_WORKERS, and start both in the background.
set -uo pipefail
OUT=${OUT:?set OUT to the folder that receives the results}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
work=$(mktemp -d /tmp/toy-controlnet.XXXXXX)   # one per run: two runs may share the machine
model="$work/control_sdstudio_toy_canny.safetensors"
log="$OUT/train_toy_controlnet.log"
if [ "$DEVICE" = cuda ]; then
    source bench/device_env.sh
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee -a "$log"
    train_args=(--images "${IMAGES:-40000}" --batch "${BATCH:-64}" --workers "${RENDER_WORKERS:-14}" --time-budget-minutes "${BUDGET:-6}")
    eval_args=(--scenes "${SCENES:-200}" --workers "${WORKERS:-3}")
else
    export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
    PYTHON=${PYTHON:-.venv/bin/python}
    if [ "${SMOKE:-0}" = 1 ]; then
        train_args=(--images 128 --steps 10 --batch 4 --workers 2)
        eval_args=(--scenes 2 --workers 2)
    else
        train_args=(--images "${IMAGES:-4000}" --batch "${BATCH:-8}" --workers 2 --time-budget-minutes "${BUDGET:-6}")
        eval_args=(--scenes "${SCENES:-20}")
    fi
fi
PYTHON=${PYTHON:-python3}
"$PYTHON" -m tools.controlnet.train_toy_controlnet --device "$DEVICE" --out "$model" "${train_args[@]}" ${TRAIN_ARGS:-} 2>&1 \
    | grep --line-buffered -v -e torchvision -e "should be kept in float32" | tee -a "$log"
[ -f "$model" ] || { echo "training wrote no model" | tee -a "$log"; exit 1; }
cp "$model" "${model%.safetensors}.training.json" "$OUT/"
left=$(( ${TOTAL:-510} - SECONDS - 25 ))   # seconds for evaluation scenes; the app's start and the report follow
[ "$DEVICE" = cpu ] && left=$(( left > 600 ? left : 600 ))
minutes=$(awk -v s="$left" 'BEGIN { printf "%.2f", (s < 30 ? 30 : s) / 60 }')
echo "evaluating for at most $minutes minutes (${SECONDS}s spent so far)" | tee -a "$log"
"$PYTHON" -m sdstudio_eval.controlnet_fidelity --device "$DEVICE" --controlnet "$model" "${eval_args[@]}" \
    --time-budget-minutes "$minutes" --out-dir "$OUT" 2>&1 \
    | grep --line-buffered -v -e torchvision -e "should be kept in float32" -e "hello-tab" | tee -a "$log"
echo "done in ${SECONDS}s" | tee -a "$log"
ls -la "$OUT"
