#!/usr/bin/env bash
# The training engine on the lent GPU: the headless smoke run (bench/train_smoke_on_device.sh), then the
# training-methods fidelity table (`python -m sdstudio_eval.training_fidelity --device cuda`) in its own process
# session. Phase "start" does both (SMOKE=0 skips the smoke run) and waits; "finish" waits for the table again
# and copies it to $OUT. ARGS go to the table (e.g. ARGS="--prompts 24").
set -uo pipefail
phase=${1:-start}
if [ "$phase" = start ]; then
    [ "${SMOKE:-1}" = 1 ] && bash bench/train_smoke_on_device.sh
    source bench/device_env.sh
    setsid nohup python3 -m sdstudio_eval.training_fidelity --device cuda \
        --out /tmp/table/FIDELITY_TRAINING.md --summary-in /tmp/table/none ${ARGS:-} > /tmp/table.log 2>&1 < /dev/null &
fi
for _ in $(seq 1 ${POLLS:-100}); do [ -f /tmp/table/FIDELITY_TRAINING.md ] && break; sleep 5; done
grep -v torchvision /tmp/table.log | tail -25
[ -f /tmp/table/FIDELITY_TRAINING.md ] || { echo "still running: call finish"; exit 3; }
cp /tmp/table/FIDELITY_TRAINING.md /tmp/table.log "$OUT/"
