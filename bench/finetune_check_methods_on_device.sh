#!/usr/bin/env bash
# Issue 23, second fine-tune, in two back-to-back calls of the device tool (a warm machine keeps /tmp):
#   start:  fine-tune (bench/finetune_toy_on_device.sh, model back in $OUT as toy.tar.part-*), then, in their
#           own process sessions on the same GPU: the candidate check of the new and the previous model
#           (`python -m sdstudio_eval.candidate_check --device cuda`, every prompt-styles row and the full
#           grammar on 200 prompts) and the training-methods table on the NEW model, one process per method
#           (`python -m sdstudio_eval.training_fidelity --methods KEY`), so the table fits the lease;
#   finish: waits for both and copies the check's JSON and the per-method tables to $OUT.
# The new model is installed into a copy of this folder under /tmp/mw (its models/default/sd-studio-toy), so
# the methods train on it exactly as the app would, and the next call's re-sent tree cannot disturb the runs.
# Usage (from the folder that holds webui/, bench/, tools/, sdstudio_eval/ and .whl/):
#   MODEL=path/to/sd-studio-toy BUDGET=8 BATCH=1024 UNET_LR=2.5e-4 bash bench/finetune_check_methods_on_device.sh start
#   bash bench/finetune_check_methods_on_device.sh finish
# METHODS (default: all six), PROMPTS (prompts per set of the methods table, default 24) and DEADLINE (seconds
# the start call may take, default 570) tune it.
# Not yet completed on a device: its one try (2026-12-05, H100, BUDGET=8 BATCH=1024 UNET_LR=2.5e-4) ended with "the
# device machine stopped answering" at the call's limit and brought nothing back, and no machine could be started
# after it. Whether the eight concurrent processes played a part is unknown: a next try can set METHODS to fewer
# methods, or run bench/finetune_toy_on_device.sh alone first (proven twice) and this script's checks after it.
set -uo pipefail
phase=${1:-start}
methods=${METHODS:-lora dreambooth dreambooth_no_prior dreambooth_lora textual_inversion pivotal}
if [ "$phase" = start ]; then
    SECONDS=0
    EVAL_PROMPTS=0 bash bench/finetune_toy_on_device.sh || exit $?
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    rm -rf /tmp/mw /tmp/previous /tmp/results && mkdir -p /tmp/results
    cp -r "$MODEL" /tmp/previous
    cp -r . /tmp/mw && rm -rf /tmp/mw/models/default/sd-studio-toy && mkdir -p /tmp/mw/models/default
    cp -r /tmp/toy/model /tmp/mw/models/default/sd-studio-toy
    cd /tmp/mw && export PYTHONPATH=/tmp/site:/tmp/mw
    export OMP_NUM_THREADS=2
    for key in $methods; do
        setsid nohup python3 -m sdstudio_eval.training_fidelity --device cuda --methods "$key" --prompts "${PROMPTS:-24}" \
            --out "/tmp/results/FIDELITY_TRAINING_$key.md" --summary-in /tmp/results/none \
            > "/tmp/results/methods_$key.log" 2>&1 < /dev/null &
    done
    setsid nohup python3 -m sdstudio_eval.candidate_check --device cuda --model /tmp/toy/model --model /tmp/previous \
        --json /tmp/results/candidate_check.json > /tmp/results/candidate_check.log 2>&1 < /dev/null &
    echo "started at ${SECONDS}s"
    while [ "$SECONDS" -lt "${DEADLINE:-570}" ] && [ ! -f /tmp/results/candidate_check.json ]; do sleep 5; done
else
    for _ in $(seq 1 ${POLLS:-110}); do
        done_count=$(ls /tmp/results/FIDELITY_TRAINING_*.md 2>/dev/null | wc -l)
        [ "$done_count" -ge "$(echo $methods | wc -w)" ] && [ -f /tmp/results/candidate_check.json ] && break
        sleep 5
    done
fi
grep -v "torchvision\|Loading weights\|shards" /tmp/results/candidate_check.log | tail -30
for log in /tmp/results/methods_*.log; do echo "== $log"; grep -v "torchvision\|Loading weights\|shards" "$log" | tail -4; done
cd /tmp/results && tar czf "$OUT/results.tgz" $(ls candidate_check.json FIDELITY_TRAINING_*.md *.log 2>/dev/null)
ls -la "$OUT"
