#!/usr/bin/env bash
# The second batch of GPU runs (one device call, H100): LLM benchmark on the Pythia-70M-shaped model,
# the torchrun --nproc-per-node 1 overhead of the distributed path, and the supplementary strong-L2 sweep.
# Usage on the GPU machine, from the repo root: bash benchmarks/gpu_session2.sh OUTDIR
set -u
out=${1:?output folder}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# transformer-lens is not on the GPU image: install the carried wheels (pure Python)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=.:/tmp/site
timeout 250 python3 benchmarks/llm.py --models pythia-70m-shaped --device cuda --tokens 10M --latents 4096 \
  --batch-size 4096 --lr 1e-3 --out "$out/llm_gpu.json" 2>&1 | tail -25
for mode in data latent; do
  timeout 80 torchrun --nproc-per-node 1 benchmarks/distributed.py --device cuda --d-in 4096 --d-sae 131072 \
    --batch-size 4096 --steps 30 --warmup-steps 5 --threads 8 --precision bf16 --mode $mode \
    --out "$out/distributed_$mode.json" 2>&1 | tail -6
done
timeout 170 python3 benchmarks/synthetic.py --device cuda --size full --methods elastic_net_strong_l2 aen_strong_l2 \
  --out "$out/syn_l2" --no-progress 2>&1 | tail -8
ls -la "$out" "$out/syn_l2"
