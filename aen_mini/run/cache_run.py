"""Train an SAE from an activation cache under torchrun: the multi-process path without a model in the workers.

    python -m torch.distributed.run --nproc-per-node 2 -m aen_mini.run.cache_run run.json CACHE_DIR held_out.safetensors

``run.json`` holds a run's settings (aen_mini.run.spec.RunSpec; ``parallel.mode`` picks data-parallel or
latent-sharded; ``train.device`` cpu means gloo); ``CACHE_DIR`` is a folder written by ``aen_mini.data.cache.cache_activations``; the safetensors file holds
the normalised held-out rows under ``x``. Data-parallel ranks each take every ``world_size``-th row of one global
stream (``StridedSource``), so any number of ranks sees the same global batches; latent-sharded ranks all read the
stream (rank 0's batches are broadcast). Rank 0 writes the usual results folder (``out``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from aen_mini.data.cache import CachedActivationSource
from aen_mini.data.strided import StridedSource
from aen_mini.train.launch import setup_from_env
from aen_mini.run.runs import RunData, run
from aen_mini.run.spec import RunSpec


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m aen_mini.run.cache_run", description=__doc__.splitlines()[0])
    p.add_argument("config", help="the run's settings as JSON (RunSpec: nested, dotted or flat keys)")
    p.add_argument("cache", help="folder written by cache_activations")
    p.add_argument("held_out", help="safetensors file with the normalised held-out rows under 'x'")
    args = p.parse_args(argv)
    from safetensors.torch import load_file

    spec = RunSpec.from_file(args.config)
    ctx = setup_from_env(spec.train.device)  # initialises the process group; run closes it
    source = CachedActivationSource(args.cache, seed=spec.train.seed, device=ctx.device)
    if ctx.launched and spec.parallel.mode == "data":
        source = StridedSource(source, ctx.rank, ctx.world_size)
    held_out = load_file(args.held_out)["x"]
    label = f"activation cache {args.cache} ({ctx.world_size} process(es), parallel={spec.parallel.mode})"
    return run(spec, RunData(source, eval_activations=held_out, label=label))


if __name__ == "__main__":
    main()
