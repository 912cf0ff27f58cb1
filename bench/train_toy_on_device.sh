#!/usr/bin/env bash
# Train the toy-world default model on the lent GPU machine.
#   start:  install the carried wheels, launch the training in its own process session, show the log after WAIT s.
#   watch:  show the log again after WAIT seconds.
#   finish: wait up to ~10 minutes for the run to end (call it again while it runs), then pack the model into
#           $OUT as toy.tar.part-* (15 MB parts: the device tool's per-file limit) with its log.
# Reassemble here with: cat toy.tar.part-* | tar x -C DIR
# The shipped model's exact step counts: VAE_STEPS=3829 UNET_STEPS=4784 (time budgets then never bind).
# A later run may continue from an earlier one: carry its model folder and set INIT_FROM=that/folder VAE_STEPS=0.
set -uo pipefail
phase=${1:-start}
if [ "$phase" = start ]; then
    source bench/device_env.sh
    rm -rf /tmp/toy; mkdir -p /tmp/toy
    setsid nohup python3 -m tools.default_model.toy_model_training \
        --out /tmp/toy/model --images ${IMAGES:-60000} \
        --vae-steps ${VAE_STEPS:-100000} --vae-batch ${VAE_BATCH:-64} --vae-lr ${VAE_LR:-5e-4} \
        --vae-minutes ${VAE_MINUTES:-8} --unet-steps ${UNET_STEPS:-100000} --batch ${BATCH:-512} \
        --unet-lr ${UNET_LR:-4e-4} ${INIT_FROM:+--init-from $INIT_FROM} \
        --workers 14 --time-budget-minutes ${BUDGET:-22} > /tmp/toy/train.log 2>&1 < /dev/null &
    sleep ${WAIT:-570}; grep -v torchvision /tmp/toy/train.log | tail -15
elif [ "$phase" = watch ]; then
    sleep ${WAIT:-570}; grep -v torchvision /tmp/toy/train.log | tail -15
else
    for _ in $(seq 1 118); do [ -f /tmp/toy/model/training_report.json ] && break; sleep 5; done
    grep -v torchvision /tmp/toy/train.log | tail -40
    [ -f /tmp/toy/model/training_report.json ] || { echo "still training: call finish again"; exit 3; }
    cp /tmp/toy/train.log "$OUT/train.log"
    tar cf - -C /tmp/toy/model . | split -b 15M - "$OUT/toy.tar.part-"
    ls -la "$OUT"
fi
