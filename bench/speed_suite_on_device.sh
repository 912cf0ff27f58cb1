#!/usr/bin/env bash
# Issue #18's speed suite (bench/speed_suite.py) on the lent GPU machine, all figures in one run.
# The run takes longer than one device command may (about 15-25 minutes for SD1.5 + SDXL), so it runs in its
# own process session and this script is called until it has ended:
#   bash bench/speed_suite_on_device.sh start    # install the carried wheels, start, wait up to WAIT s
#   bash bench/speed_suite_on_device.sh finish   # wait up to WAIT s more; call again while it runs (exit 3)
# Each call copies what exists so far (speed_suite.json, written after every section; speed_suite.md and the
# log) into $OUT. FAMILIES="sd1 sdxl" and SECTIONS="txt2img first_image switch lora training" choose a part;
# DEVICE=cpu ARGS=--smoke tries the script itself on a machine without a GPU.
# Wheels to carry in .whl/ (the machine lacks them; peft + accelerate: plain diffusers' LoRA baseline):
#   pip download --no-deps -d .whl diffusers==0.42.1 importlib_metadata lazy_importer peft==0.21.2 accelerate==1.16.0
set -uo pipefail
phase=${1:-start}
run=/tmp/speed_suite
if [ "$phase" = start ]; then
    source bench/device_env.sh
    rm -rf "$run"; mkdir -p "$run/work"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
    setsid nohup bash -c "python3 bench/speed_suite.py --device ${DEVICE:-cuda} ${ARGS:-} --families ${FAMILIES:-sd1 sdxl} \
        --sections ${SECTIONS:-txt2img first_image switch lora training} --work-dir $run/work \
        --out $run/speed_suite.json > $run/log 2>&1; echo \$? > $run/rc" < /dev/null > /dev/null 2>&1 &
else
    export PYTHONPATH=/tmp/site:$PWD
fi
for _ in $(seq 1 $(( ${WAIT:-540} / 5 ))); do [ -f "$run/rc" ] && break; sleep 5; done
grep -v -i "torchvision\|warn\|Loading" "$run/log" | cut -c1-400 | tail -25
for file in speed_suite.json speed_suite.md log; do [ -f "$run/$file" ] && cp "$run/$file" "$OUT/"; done
[ -f "$run/rc" ] || { echo "still running: call finish again"; exit 3; }
echo "suite exit $(cat "$run/rc")"
exit "$(cat "$run/rc")"
