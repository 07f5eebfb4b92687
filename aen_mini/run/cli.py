"""The command line: ``python -m aen_mini {train,eval,export,plan,build-tiny-lm,sweep}``.

Offline examples (no download; CPU):

    python -m aen_mini train --model spiked --sae aen --latents 256 --tokens 400k --batch-size 1024 --lr 4e-3 \\
        --target-l0 16 --out runs/spiked-aen                          # about a minute of CPU: 5 runs of 390 steps
    python -m aen_mini train --sae aen --latents 1024 --tokens 256k --batch-size 1024 --lr 4e-3 --target-l0 32 \\
        --out runs/tiny-aen                        # tiny-neox on stdlib docstrings: calibration runs + the run, minutes
    python -m aen_mini train --config runs/tiny-aen/config.json --resume   # continue it after an interruption
    python -m aen_mini eval runs/tiny-aen                              # spliced CE / KL / CE recovered -> eval.json
    python -m aen_mini export runs/tiny-aen --out saelens/tiny-aen     # SAELens folder
    python -m aen_mini plan --d-in 512 --latents 4096 --tokens 204.8M  # memory and compute before a run

Online (Pythia-70M from the hub, a GPU):

    python -m aen_mini train --model EleutherAI/pythia-70m-deduped --hook blocks.3.hook_resid_post \\
        --sae aen --latents 4096 --tokens 204.8M --target-l0 32 --device cuda --fast --out runs/pythia-aen
    torchrun --nproc-per-node 4 -m aen_mini train ...    # data-parallel (or --parallel latent)

Errors print one line, ``error: ...``, and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict, fields
from typing import Sequence

from aen_mini.run.runs import RunConfig

_TYPES = {"int | None": int, "float | None": float, "int": int, "float": float, "str": str, "int | str": str}

# One line of help per RunConfig field (tests/test_cli.py checks that none is missing).
HELP = {
    "model": "model registry name ('spiked': the synthetic data of chapter 3, no model)",
    "hook": "TransformerLens hook whose activations the SAE learns",
    "sae": "SAE variant: relu_l1, topk, batch_topk, elastic_net, adaptive_lasso, aen",
    "latents": "number of SAE latents (d_sae)",
    "tokens": "training tokens (8192, 25k, 204.8M); steps = tokens // batch size",
    "batch_size": "tokens per optimiser step",
    "lr": "Adam learning rate",
    "lr_warmup_steps": "steps of linear learning-rate warm-up",
    "lr_decay_start": "fraction of training after which the learning rate decays linearly to 0",
    "grad_clip": "maximum gradient norm (0: no clipping)",
    "l1": "L1 coefficient, or calibrate it with --target-l0 (default: 1.0 for relu_l1 and elastic_net, 0.3 for "
          "adaptive_lasso and aen)",
    "l2": "L2 coefficient on the codes, elastic_net and aen (default: 0.1 x l1)",
    "k": "active latents per token, topk and batch_topk (default: 32, at most a quarter of the latents)",
    "gamma": "adaptive reweighting exponent, adaptive_lasso and aen (default: 1)",
    "ema_beta": "decay of the adaptive reweighting's running mean (default: 0.99)",
    "ref_pct": "share of the most active latents that sets the reference weight (default: 0.01)",
    "warmup_start": "step at which adaptive reweighting begins (default: a quarter of the steps)",
    "warmup_steps": "steps over which adaptive reweighting ramps in (default: a quarter of the steps)",
    "aux_coeff": "AuxK loss coefficient, topk and batch_topk (default: 1/32)",
    "dead_after_tokens": "a latent silent for this many tokens counts as dead (default: 1M)",
    "corpus": "'stdlib' (offline docstrings), a text file or folder, or 'hf:DATASET' (online)",
    "ctx_len": "tokens per context",
    "max_contexts": "use at most this many contexts of the corpus (default: all)",
    "eval_contexts": "contexts held out for evaluation (the corpus's last ones; at least 1)",
    "normalize": "rescale every token's activation to norm sqrt(d), as the authors do",
    "buffer_rows": "rows of the activation shuffle buffer",
    "contexts_per_chunk": "contexts harvested per forward pass",
    "rho": "spiked data only: correlation of the dictionary atoms, in [0, 1)",
    "device": "torch device: cpu, cuda, cuda:1, mps",
    "precision": "fp32, or bf16 (bf16 matmuls, fp32 weights and optimiser)",
    "fast": "the fused fast training step (one process; compiled and CUDA-graphed on a GPU)",
    "parallel": "under torchrun: 'data' (each GPU a share of every batch) or 'latent' (a share of the latents)",
    "seed": "seed of the SAE's initialisation and the data order",
    "checkpoint_every": "steps between checkpoints (0: only at the end)",
    "out": "results folder (checkpoint.safetensors, config.json, metrics.json)",
    "progress": "show a progress bar",
    "target_l0": "calibrate l1 to this held-out L0 (a few whole training runs, then the run itself)",
    "calibration_trials": "most calibration runs for --target-l0",
}


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field (``--batch-size`` for ``batch_size``); a flag left out takes the config file's
    value, else the default shown."""
    parser.add_argument("--config", help="JSON or TOML file of run settings (a flat table, or a results folder's "
                                         "config.json); flags given here override it")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint (refused if settings or data differ)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (without it, such a folder is refused)")
    defaults = RunConfig()
    for f in fields(RunConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = {True: "on", False: "off", None: "none"}.get(default, default) if not isinstance(default, int) \
            or isinstance(default, bool) else default
        text = HELP[f.name] if "(default" in HELP[f.name] else f"{HELP[f.name]} (default: {shown})"
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=_TYPES[str(f.type)], default=None,
                                metavar=f.name.upper(), help=text.replace("%", "%%"))


def _run_config(args: argparse.Namespace) -> RunConfig:
    values = asdict(RunConfig.from_file(args.config)) if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in fields(RunConfig)
                   if f.name != "extra" and getattr(args, f.name) is not None})
    return RunConfig.from_dict(values)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line naming the problem and where help is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m aen_mini", description=__doc__, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub = dict(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_run_options(commands.add_parser("train", help="train an SAE on a model's activations (or spiked data)",
                                         description=__doc__, allow_abbrev=False,
                                         formatter_class=argparse.RawDescriptionHelpFormatter))
    ev = commands.add_parser("eval", help="spliced evaluation of a results folder", **sub)
    ev.add_argument("results_dir", help="a folder written by train")
    ev.add_argument("--device", default=None, help="torch device (default: the run's)")
    ex = commands.add_parser("export", help="export a results folder's SAE to the SAELens format", **sub)
    ex.add_argument("results_dir", help="a folder written by train")
    ex.add_argument("--out", required=True, help="folder for cfg.json + sae_weights.safetensors")
    pl = commands.add_parser("plan", help="memory and compute of a run, before starting it", **sub)
    pl.add_argument("--d-in", type=int, required=True, help="activation width")
    pl.add_argument("--latents", type=int, required=True, help="number of SAE latents")
    pl.add_argument("--tokens", required=True, help="training tokens (8192, 25k, 204.8M)")
    pl.add_argument("--batch-size", type=int, default=8192, help="tokens per step")
    tl = commands.add_parser("build-tiny-lm", help="train the offline tiny GPT-NeoX language model", **sub)
    tl.add_argument("--out", default=None, help="folder for the model (default: the package's assets folder)")
    tl.add_argument("--steps", type=int, default=3000, help="training steps")
    tl.add_argument("--device", default="cpu", help="torch device")
    # Listed for --help; aen_mini/__main__.py runs it (an experiment: the run layer does not import experiments).
    commands.add_parser("sweep", help="the synthetic starvation sweep (python -m aen_mini sweep --help)", add_help=False)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        return _dispatch(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous


def _one_line(err: BaseException) -> str:
    """The error as one line; an OSError (disk full, read-only, permission) with the file it concerns."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        text = f"cannot write the results: {err.strerror}{where}"
    else:
        text = str(err)
    return " ".join(text.split())


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from aen_mini.run.runs import run_training

        out = run_training(_run_config(args), resume=args.resume, overwrite=args.overwrite)
        print(f"results written to {out}")
    elif args.command == "eval":
        from aen_mini.run.runs import evaluate_run

        print(json.dumps(evaluate_run(args.results_dir, device=args.device), indent=2))
    elif args.command == "export":
        from pathlib import Path

        from aen_mini.io.checkpoint import load_sae
        from aen_mini.run.runs import SPIKED, read_results_config
        from aen_mini.io.saelens import export_to_saelens

        run = read_results_config(args.results_dir)
        if run.model == SPIKED:
            raise ValueError(f"{args.results_dir} was trained on spiked synthetic data: SAELens needs a model and hook")
        folder = export_to_saelens(load_sae(Path(args.results_dir) / "checkpoint.safetensors"), args.out,
                                   model_name=run.model, hook_name=run.hook,
                                   normalize_activations="constant_norm_rescale" if run.normalize else "none",
                                   context_size=run.ctx_len)
        print(f"SAELens folder written to {folder}")
    elif args.command == "plan":
        from aen_mini.run.planning import parse_count, plan_run

        print(json.dumps(plan_run(args.d_in, args.latents, parse_count(args.tokens), args.batch_size).as_row(), indent=2))
    elif args.command == "build-tiny-lm":
        from aen_mini.lm.models import TINY_NEOX_DIR
        from aen_mini.lm.tiny_lm import train_tiny_lm
        from aen_mini.validate import check_device

        check_device("device", args.device)
        print(json.dumps(train_tiny_lm(args.out or TINY_NEOX_DIR, steps=args.steps, device=args.device), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
