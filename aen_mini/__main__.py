"""The command line: ``python -m aen_mini {train,eval,export,plan,build-tiny-lm,sweep}``.

    python -m aen_mini train --model EleutherAI/pythia-70m-deduped --hook blocks.3.hook_resid_post \\
        --sae aen --latents 4096 --tokens 204.8M --device cuda --out runs/pythia-aen
    python -m aen_mini train --config run.json          # the same settings from a file (JSON, or TOML)
    python -m aen_mini eval runs/pythia-aen              # spliced CE / KL / CE recovered -> eval.json
    torchrun --nproc-per-node 4 -m aen_mini train ...    # data-parallel (or --parallel latent)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from typing import Sequence

from aen_mini.runs import RunConfig

_TYPES = {"int | None": int, "float | None": float, "int": int, "float": float, "str": str, "int | str": str}


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field (``--batch-size`` for ``batch_size``), all defaulting to 'not given'."""
    parser.add_argument("--config", help="JSON or TOML file of run settings; flags given here override it")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors if it exists")
    for f in fields(RunConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=_TYPES[str(f.type)], default=None,
                                metavar=f.name.upper())


def _run_config(args: argparse.Namespace) -> RunConfig:
    values = asdict(RunConfig.from_file(args.config)) if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in fields(RunConfig)
                   if f.name != "extra" and getattr(args, f.name) is not None})
    return RunConfig.from_dict(values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aen_mini", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_options(commands.add_parser("train", help="train an SAE on a model's activations (or spiked data)"))
    ev = commands.add_parser("eval", help="spliced evaluation of a results folder")
    ev.add_argument("results_dir")
    ev.add_argument("--device")
    ex = commands.add_parser("export", help="export a results folder's SAE to the SAELens format")
    ex.add_argument("results_dir")
    ex.add_argument("--out", required=True, help="folder for cfg.json + sae_weights.safetensors")
    pl = commands.add_parser("plan", help="memory and compute of a run, before starting it")
    pl.add_argument("--d-in", type=int, required=True)
    pl.add_argument("--latents", type=int, required=True)
    pl.add_argument("--tokens", required=True)
    pl.add_argument("--batch-size", type=int, default=8192)
    tl = commands.add_parser("build-tiny-lm", help="train the offline tiny GPT-NeoX language model")
    tl.add_argument("--out", default=None, help="default: the package's assets folder")
    tl.add_argument("--steps", type=int, default=3000)
    tl.add_argument("--device", default="cpu")
    commands.add_parser("sweep", help="the synthetic starvation sweep (python -m aen_mini sweep --help)", add_help=False)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        from aen_mini.sweep import main as sweep_main

        sweep_main(argv[1:])
        return 0
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from aen_mini.runs import run_training

        out = run_training(_run_config(args), resume=args.resume)
        print(f"results written to {out}")
    elif args.command == "eval":
        from aen_mini.runs import evaluate_run

        print(json.dumps(evaluate_run(args.results_dir, device=args.device), indent=2))
    elif args.command == "export":
        from pathlib import Path

        from aen_mini.checkpoint import load_sae
        from aen_mini.saelens import export_to_saelens

        run = json.loads((Path(args.results_dir) / "config.json").read_text())
        folder = export_to_saelens(load_sae(Path(args.results_dir) / "checkpoint.safetensors"), args.out,
                                   model_name=run["model"], hook_name=run["hook"],
                                   normalize_activations="constant_norm_rescale" if run["normalize"] else "none",
                                   context_size=run["ctx_len"])
        print(f"SAELens folder written to {folder}")
    elif args.command == "plan":
        from aen_mini.planning import parse_count, plan_run

        print(json.dumps(plan_run(args.d_in, args.latents, parse_count(args.tokens), args.batch_size).as_row(), indent=2))
    elif args.command == "build-tiny-lm":
        from aen_mini.models import TINY_NEOX_DIR
        from aen_mini.tiny_lm import train_tiny_lm

        print(json.dumps(train_tiny_lm(args.out or TINY_NEOX_DIR, steps=args.steps, device=args.device), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
