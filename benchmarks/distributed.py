"""Throughput of the distributed training path against the plain single-process trainer, on whatever device is
present: tokens/s of ``train(...)`` with ``parallel=None`` and with ``DataParallel`` / ``LatentSharded``.

    torchrun --nproc-per-node 1 benchmarks/distributed.py --device cuda --d-in 4096 --d-sae 131072 --batch-size 4096
    .venv/bin/python benchmarks/distributed.py --device cpu --d-in 64 --d-sae 1024   # small, on the CPU

Without torchrun it starts a one-process group itself. At nproc 1 the difference between the two numbers is the
cost of the distributed machinery (DDP hooks, collectives on one rank); with more processes the plain trainer is
not run and the distributed number is the global tokens/s. Batches are random normal activations made on the
device (so data loading is not measured). Rank 0 writes benchmarks/distributed.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aen_mini.experiments.report import provenance  # noqa: E402
from aen_mini.io.atomic import atomic_write_text  # noqa: E402
from aen_mini.train.launch import setup_from_env  # noqa: E402
from aen_mini.sae import make_sae  # noqa: E402
from aen_mini.train.loop import TrainConfig, train  # noqa: E402


class RandomSource:
    """Random normal batches made on the device: the trainer's throughput without a data pipeline."""

    def __init__(self, d_in: int, device: str, seed: int) -> None:
        self.d_in, self.device = d_in, device
        self.generator = torch.Generator(device).manual_seed(seed)

    def next_batch(self, batch_size: int) -> torch.Tensor:
        return torch.randn(batch_size, self.d_in, device=self.device, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def tokens_per_s(args: argparse.Namespace, device: str, parallel) -> float:
    """Warm up (allocator, kernels, DDP buckets), then time ``args.steps`` steps of a fresh run."""
    rates = []
    for steps in (args.warmup_steps, args.steps):
        sae = make_sae(args.variant, args.d_in, args.d_sae, seed=0)
        cfg = TrainConfig(steps=steps, batch_size=args.batch_size, device=device, log_every=steps, progress=False,
                          precision=args.precision)
        result = train(sae, RandomSource(args.d_in, device, seed=parallel.rank if parallel else 0), cfg, parallel=parallel)
        rates.append(steps * args.batch_size / result.wall_s)  # the last log record synchronises the device
    return rates[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", default="aen")
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--mode", choices=["data", "latent"], default="data")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (shared machines: keep it small)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "distributed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "RANK" not in os.environ:  # plain python: a one-process group on this machine
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with setup_from_env(args.device) as ctx:
        plain = tokens_per_s(args, ctx.device, None) if ctx.world_size == 1 else None
        distributed = tokens_per_s(args, ctx.device, ctx.strategy(args.mode))
        if ctx.is_main:
            record = {
                "provenance": provenance(sys.argv, ctx.device),
                "world_size": ctx.world_size, "mode": args.mode, "load_average_1min": round(os.getloadavg()[0], 2),
                "setup": {k: v for k, v in vars(args).items() if k != "out"},
                "tokens_per_s_plain": plain, "tokens_per_s_distributed": distributed,
                "distributed_over_plain": distributed / plain if plain else None,
            }
            atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
            print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
