#!/usr/bin/env bash
# Train the toy-world default model on the lent GPU machine.
#   start:  launch one training per latent factor in FACTORS (default "4"; "4 8" trains both side by side on
#           the one GPU) in its own process session, then show the logs after WAIT seconds.
#   watch:  show the logs again after WAIT seconds.
#   finish: wait up to ~10 minutes for every run to end (call it again while they run), then pack each model
#           into $OUT as toy-fF.tar.part-* (15 MB parts: the device tool's per-file limit) with its log.
# Reassemble here with: cat toy-f4.tar.part-* | tar x -C DIR
# A later run may continue from an earlier one: carry its model folder and set INIT_FROM=that/folder VAE_STEPS=0.
set -uo pipefail
phase=${1:-start}
factors=${FACTORS:-4}
show_logs() { for f in $factors; do echo "== factor $f"; grep -v torchvision /tmp/toy/f$f/train.log | tail -${1:-15}; done; }
if [ "$phase" = start ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    rm -rf /tmp/toy
    runs=$(echo $factors | wc -w)
    for f in $factors; do
        mkdir -p /tmp/toy/f$f
        PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 setsid nohup python3 -m webui.eval.toy_model_training \
            --out /tmp/toy/f$f/model --latent-factor $f --images ${IMAGES:-60000} \
            --vae-steps ${VAE_STEPS:-100000} --vae-batch ${VAE_BATCH:-64} --vae-lr ${VAE_LR:-5e-4} \
            --vae-minutes ${VAE_MINUTES:-8} --unet-steps ${UNET_STEPS:-100000} --batch ${BATCH:-512} \
            --unet-lr ${UNET_LR:-4e-4} ${INIT_FROM:+--init-from $INIT_FROM} \
            --workers $((14 / runs)) --time-budget-minutes ${BUDGET:-22} > /tmp/toy/f$f/train.log 2>&1 < /dev/null &
    done
    sleep ${WAIT:-570}; show_logs
elif [ "$phase" = watch ]; then
    sleep ${WAIT:-570}; show_logs
else
    for _ in $(seq 1 118); do
        done_count=0
        for f in $factors; do [ -f /tmp/toy/f$f/model/training_report.json ] && done_count=$((done_count + 1)); done
        [ $done_count = $(echo $factors | wc -w) ] && break
        sleep 5
    done
    show_logs 40
    for f in $factors; do
        [ -f /tmp/toy/f$f/model/training_report.json ] || { echo "factor $f still training: call finish again"; exit 3; }
        cp /tmp/toy/f$f/train.log "$OUT/train-f$f.log"
        tar cf - -C /tmp/toy/f$f/model . | split -b 15M - "$OUT/toy-f$f.tar.part-"
    done
    ls -la "$OUT"
fi
