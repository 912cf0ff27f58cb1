#!/usr/bin/env bash
# The training engine on the lent GPU: LoRA (bf16 autocast, gradient checkpointing), LoRA in fp16 with loss
# scaling, and Textual Inversion on the toy default model, headless through `python -m webui.train` (the Train
# tab's code path).
set -uo pipefail
source bench/device_env.sh
rm -rf /tmp/smoke && mkdir -p /tmp/smoke/data
python3 - <<'PY'
import json
from sdstudio_eval.toy_world import held_out_concept_images
folder = "/tmp/smoke/hexagons"
import os; os.makedirs(folder, exist_ok=True)
for i, image in enumerate(held_out_concept_images("hexagon", 8)):
    image.save(f"{folder}/{i:02d}.png")
common = dict(base_checkpoint="sd-studio-toy", dataset_dir=folder, trigger_word="hxgn", class_word="shape", resolution=128, min_bucket_resolution=64,
              max_bucket_resolution=256, bucket_step=64, mixed_precision="bf16", gradient_checkpointing=True,
              max_train_steps=200, train_batch_size=4, save_every_n_epochs=0, seed=1)
json.dump(dict(common, method="lora", output_name="gpu_lora", rank=8, alpha=8, unet_lr=1e-3, train_text_encoder=True),
          open("/tmp/smoke/lora.json", "w"))
json.dump(dict(common, method="lora", output_name="gpu_lora_fp16", rank=8, alpha=8, unet_lr=1e-3, train_text_encoder=True,
               mixed_precision="fp16"), open("/tmp/smoke/lora_fp16.json", "w"))
json.dump(dict(common, method="textual_inversion", output_name="gpu_ti", token="hxgn", init_word="shape",
               num_vectors=2, embedding_lr=5e-3), open("/tmp/smoke/ti.json", "w"))
PY
nvidia-smi --query-gpu=name --format=csv,noheader
for job in lora lora_fp16 ti; do
    SECONDS=0
    python3 -m webui.train /tmp/smoke/$job.json --data-dir /tmp/smoke/data --device cuda 2>&1 | grep -v torchvision | tail -4
    echo "$job exit ${PIPESTATUS[0]} wall ${SECONDS}s"
done
ls -la /tmp/smoke/data/models/Lora /tmp/smoke/data/models/embeddings 2>&1
python3 - <<'PY'
import glob, torch
from safetensors.torch import load_file
for path in sorted(glob.glob("/tmp/smoke/data/models/*/gpu_*.safetensors")):
    tensors = load_file(path)
    finite = all(torch.isfinite(t.float()).all() for t in tensors.values())
    print(f"{path.split('/')[-1]}: {len(tensors)} tensors, all finite: {finite}")
PY
