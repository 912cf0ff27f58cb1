#!/usr/bin/env bash
# Issue 23, second fine-tune, in back-to-back calls of the device tool (a warm machine keeps /tmp):
#   start:   fine-tune (bench/finetune_toy_on_device.sh, model back in $OUT as toy.tar.part-* before anything
#            else runs), then the candidate check of the models named in CHECKS (default: the new one) on the GPU,
#            one process each (`python -m sdstudio_eval.candidate_check --device cuda`: every prompt-styles row
#            and the full grammar on 200 prompts); the call waits for them and brings their JSON back;
#   methods: the candidate check of the models named in LATE_CHECKS (default: the previous one), and the
#            training-methods table on the NEW model in METHOD_GROUPS processes, each training its methods one
#            after the other (`python -m sdstudio_eval.training_fidelity --methods ...`), all in their own process
#            sessions; waits until all are done or DEADLINE seconds passed, and brings back what is done;
#   finish:  waits again for what the methods phase left running and brings back everything.
# EARLY_METHODS=1 starts the methods table in the start phase, as soon as the checks are started (2026-12-06: failed
# machine starts had left too little device time for three calls); the next call is then `finish`, with the same
# METHOD_GROUPS. METHOD_THREADS sets the methods' OMP_NUM_THREADS (default 4).
# A check that a call's deadline cut short keeps running, and the next phase's call waits for it and brings it back.
# The new model is installed into a copy of this folder under /tmp/mw (its models/default/sd-studio-toy), so
# the methods train on it exactly as the app would, and the next call's re-sent tree cannot disturb the runs.
# Usage (from the folder that holds webui/, bench/, tools/, sdstudio_eval/ and .whl/):
#   MODEL=path/to/sd-studio-toy BUDGET=8 BATCH=1024 UNET_LR=2.5e-4 bash bench/finetune_check_methods_on_device.sh start
#   bash bench/finetune_check_methods_on_device.sh methods
#   bash bench/finetune_check_methods_on_device.sh finish
# CHECKS and LATE_CHECKS (which models the start and the methods phase check: "new" and "previous" by default; the
# previous model's check moved to the methods phase (2026-12-06) so that the start phase, a fine-tune of BUDGET
# minutes plus a check, ends well inside the device tool's 600 s),
# METHOD_GROUPS (space-separated groups of comma-separated method keys; default: three groups balanced by the H100
# train seconds of 2026-11-23), PROMPTS (prompts per set of the methods table, default 24) and DEADLINE (seconds
# a call may take, default 570) tune it.
# History: its first form (2026-12-05, H100) started the fine-tune, the check and one process per method (eight
# processes) in one call, which ended with "the device machine stopped answering" and brought nothing back; so
# the check and the table now run in separate calls, with at most three processes at a time.
# 2026-12-06 (H100): `start` with CHECKS="new previous" BUDGET=7 (2,705 steps) and DEADLINE=515 ran in 517 s;
# the two checks drew their prompt-styles rows in about 170 s and needed a 95 s `finish` call for the full grammar
# on 200 prompts; the methods table did not run (no device time left).
set -uo pipefail
phase=${1:-start}
groups=${METHOD_GROUPS:-textual_inversion,dreambooth_no_prior dreambooth_lora,lora dreambooth,pivotal}
SECONDS=0
filtered() { grep -v "torchvision\|Loading weights\|shards" "$1" | tail -"${2:-6}"; }
start_check() {  # $1: "new" (the fine-tune's result) or "previous" (MODEL as it was); runs in /tmp/mw
    local model=/tmp/toy/model; [ "$1" = previous ] && model=/tmp/previous
    setsid nohup python3 -m sdstudio_eval.candidate_check --device cuda --model $model \
        --json /tmp/results/check_$1.json > /tmp/results/check_$1.log 2>&1 < /dev/null &
}
start_methods() {  # the training-methods table on the new model, one process per group; runs in /tmp/mw
    for group in $groups; do
        OMP_NUM_THREADS=${METHOD_THREADS:-4} setsid nohup python3 -m sdstudio_eval.training_fidelity --device cuda \
            --methods ${group//,/ } --prompts "${PROMPTS:-24}" --out "/tmp/results/FIDELITY_TRAINING_${group%%,*}.md" \
            --summary-in /tmp/results/none > "/tmp/results/methods_${group%%,*}.log" 2>&1 < /dev/null &
    done
    echo "methods started at ${SECONDS}s (this script's clock): $groups"
}
checks_running() {  # true while a started check has not written its JSON
    [ "$(ls /tmp/results/check_*.json 2>/dev/null | wc -l)" -lt "$(ls /tmp/results/check_*.log 2>/dev/null | wc -l)" ]
}
if [ "$phase" = start ]; then
    EVAL_PROMPTS=0 EVAL_WAIT=0 bash bench/finetune_toy_on_device.sh || exit $?
    rm -rf /tmp/mw /tmp/previous /tmp/results && mkdir -p /tmp/results
    cp -r "$MODEL" /tmp/previous
    cp -r . /tmp/mw && rm -rf /tmp/mw/models/default/sd-studio-toy && mkdir -p /tmp/mw/models/default
    cp -r /tmp/toy/model /tmp/mw/models/default/sd-studio-toy
    cd /tmp/mw && export PYTHONPATH=/tmp/site:/tmp/mw PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
    for name in ${CHECKS-new}; do start_check $name; done
    echo "checks started at ${SECONDS}s (this script's clock): ${CHECKS-new}"
    [ -n "${EARLY_METHODS:-}" ] && start_methods
    while [ "$SECONDS" -lt "${DEADLINE:-560}" ] && checks_running; do sleep 3; done
    for log in /tmp/results/check_*.log; do echo "== $log"; filtered "$log" 14; done
    cd /tmp/results && tar czf "$OUT/check.tgz" $(ls check_* methods_*.log 2>/dev/null)
    ls -la "$OUT"
    exit 0
fi
[ -d /tmp/mw ] || { echo "no /tmp/mw: the machine is a fresh one; run the start phase first"; exit 4; }
cd /tmp/mw && export PYTHONPATH=/tmp/site:/tmp/mw PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
if [ "$phase" = methods ]; then
    for name in ${LATE_CHECKS-previous}; do [ -f /tmp/results/check_$name.log ] || start_check $name; done
    start_methods
fi
expected=$(echo $groups | wc -w)
while [ "$SECONDS" -lt "${DEADLINE:-570}" ] && { checks_running || [ "$(ls /tmp/results/FIDELITY_TRAINING_*.md 2>/dev/null | wc -l)" -lt "$expected" ]; }; do
    sleep 5
done
for log in /tmp/results/check_*.log; do echo "== $log"; filtered "$log" 14; done
for log in /tmp/results/methods_*.log; do echo "== $log"; filtered "$log" 8; done
cd /tmp/results && tar czf "$OUT/results.tgz" $(ls check_* FIDELITY_TRAINING_*.md methods_*.log 2>/dev/null)
ls -la "$OUT"
