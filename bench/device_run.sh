#!/usr/bin/env bash
# How GPU figures in docs/BENCHMARKS.md were produced on the lent GPU machine (which lacks diffusers):
# wheels carried in .whl/, installed to /tmp/site, then the benchmark and the engine tests on CUDA.
set -uo pipefail
source bench/device_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
python3 bench/txt2img_speed.py --device cuda --families ${FAMILIES:-sd1 sdxl} --out "${OUT:-/tmp}/txt2img_speed.json" 2>&1 | grep -v torchvision
if [ "${RUN_TESTS:-1}" = 1 ]; then
    python3 -m pytest -q -W ignore -p no:cacheprovider tests/engine tests/unit/test_samplers.py tests/unit/test_ldm_conversion.py -x 2>&1 | tail -15
fi
