"""The command line: ``python -m aen_mini {train,eval,export,plan,build-tiny-lm,sweep}``.

``train`` takes one flag per setting of aen_mini.run.spec.RunSpec, by section: ``--data.*`` (which activations),
``--sae.*`` (the variant and every variant's hyperparameters), ``--train.*`` (every TrainConfig option),
``--parallel.mode``, and ``--tokens``, ``--out``, ``--target-l0``. The flat flags of earlier versions (``--lr``,
``--l1``, ``--batch-size`` ...) still work. A flag left out takes the config file's value, else the default shown.

Offline examples (no download; CPU):

    python -m aen_mini train --data.model spiked --sae.variant aen --sae.latents 256 --tokens 400k \\
        --train.batch-size 1024 --train.lr 4e-3 --target-l0 16 --out runs/spiked-aen   # about a minute of CPU
    python -m aen_mini train --sae.variant topk --sae.k 16 --sae.aux-k 64 --sae.latents 1024 --tokens 256k \\
        --train.batch-size 1024 --train.adam-betas 0.9 0.99 --out runs/tiny-topk   # tiny-neox, English prose
    python -m aen_mini train --config runs/tiny-topk/config.json --resume   # continue it after an interruption
    python -m aen_mini eval runs/tiny-topk                             # spliced CE / KL / CE recovered -> eval.json
    python -m aen_mini export runs/tiny-topk --out saelens/tiny-topk   # SAELens folder
    python -m aen_mini plan --d-in 512 --latents 4096 --tokens 204.8M  # memory and compute before a run

Online (Pythia-70M from the hub, a GPU):

    python -m aen_mini train --data.model EleutherAI/pythia-70m-deduped --data.hook blocks.3.hook_resid_post \\
        --sae.variant aen --sae.latents 4096 --tokens 204.8M --target-l0 32 --train.device cuda --train.fast \\
        --out runs/pythia-aen
    torchrun --nproc-per-node 4 -m aen_mini train ...    # data-parallel (or --parallel.mode latent)

Errors print one line, ``error: ...``, and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import MISSING, fields
from typing import Any, Callable, Sequence

from aen_mini.run.spec import (DERIVED_SAE_FIELDS, DERIVED_TRAIN_FIELDS, FLAT_KEYS, RUN_DEFAULT_NOTES, RunSpec,
                               read_settings)
from aen_mini.sae import VARIANTS, config_class, hyperparameter_names

# Help beside a TrainConfig option where a run reads it differently from the trainer.
RUN_HELP = {"train.checkpoint_every": "steps between checkpoints (0: only at the end)",
            "train.log_every": "steps between logged records (at most a twentieth of the run; 0: only the last step)"}
OLD_FLAGS = {dotted: flat for flat, dotted in FLAT_KEYS.items()}


def _parse(annotation: str) -> tuple[Callable[[str], Any] | None, int | None]:
    """(type, nargs) of a flag from its field's annotation; type None: a boolean switch."""
    kind = annotation.removesuffix(" | None")
    if kind == "bool":
        return None, None
    if kind == "tuple[float, float]":
        return float, 2
    base = {"int": int, "float": float}.get(kind, str)
    if annotation.endswith(" | None"):
        return (lambda text: None if text.lower() == "none" else base(text)), None
    return base, None


def _shown(value: Any) -> str:
    return {True: "on", False: "off", None: "none"}.get(value, value) if isinstance(value, (bool, type(None))) \
        else " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def run_options() -> list[tuple[str, str, str, Any]]:
    """(dotted name, annotation, help, default shown) of every train flag, in the order --help lists them."""
    spec, options = RunSpec(), []
    for section in ("data", "train", "parallel"):
        owner = getattr(spec, section)
        for f in fields(owner):
            if section == "train" and f.name in DERIVED_TRAIN_FIELDS:
                continue
            name = f"{section}.{f.name}"
            options.append((name, str(f.type), RUN_HELP.get(name, f.metadata["help"]), _shown(getattr(owner, f.name))))
    options += [("sae.variant", "str", fields(spec.sae)[0].metadata["help"], spec.sae.variant),
                ("sae.latents", "int", fields(spec.sae)[1].metadata["help"], spec.sae.latents)]
    seen: dict[str, list[str]] = {}
    for variant in VARIANTS:  # every variant's hyperparameters, each once, saying which variants take it
        for name in hyperparameter_names(variant):
            if name not in DERIVED_SAE_FIELDS:
                seen.setdefault(name, []).append(variant)
    for name, variants in seen.items():
        f = next(f for f in fields(config_class(variants[0])) if f.name == name)
        which = "every variant" if len(variants) == len(VARIANTS) else ", ".join(variants)
        default = RUN_DEFAULT_NOTES.get(name, _shown(f.default if f.default is not MISSING else None))
        text = f.metadata.get("help") or name.replace("_", " ")  # a variant's field without option() help
        options.append((f"sae.{name}", str(f.type), f"{text} [{which}]", default))
    for f in fields(RunSpec):
        if f.name not in ("data", "sae", "train", "parallel", "extra"):
            options.append((f.name, str(f.type), f.metadata["help"], _shown(getattr(spec, f.name))))
    return options


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RunSpec setting (``--train.batch-size`` for train.batch_size), plus the flat flag of earlier
    versions where there was one (``--batch-size``)."""
    parser.add_argument("--config", help="JSON or TOML file of run settings (nested tables, dotted or flat keys, or "
                                         "a results folder's config.json); flags given here override it")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint (refused if settings or data differ)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (without it, such a folder is refused)")
    for name, annotation, text, default in run_options():
        flags = ["--" + name.replace("_", "-")]
        if name in OLD_FLAGS and OLD_FLAGS[name] != name:
            flags.append("--" + OLD_FLAGS[name].replace("_", "-"))
        text = f"{text} (default: {default})".replace("%", "%%")
        kind, nargs = _parse(annotation)
        if kind is None:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(*flags, dest=name, type=kind, nargs=nargs, default=None, help=text,
                                metavar=name.rpartition(".")[2].upper())


def _run_spec(args: argparse.Namespace) -> RunSpec:
    values = read_settings(args.config) if args.config else {}
    given = {name: getattr(args, name) for name, *_ in run_options() if getattr(args, name) is not None}
    try:
        return RunSpec.from_dict({**values, **given})
    except (ValueError, TypeError) as err:
        raise ValueError(f"config {args.config}: {err}" if args.config else str(err)) from None


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

        out = run_training(_run_spec(args), resume=args.resume, overwrite=args.overwrite)
        print(f"results written to {out}")
    elif args.command == "eval":
        from aen_mini.run.runs import evaluate_run

        print(json.dumps(evaluate_run(args.results_dir, device=args.device), indent=2))
    elif args.command == "export":
        from pathlib import Path

        from aen_mini.io.checkpoint import load_sae
        from aen_mini.run.runs import SPIKED, read_results_config
        from aen_mini.io.saelens import export_to_saelens

        data = read_results_config(args.results_dir).data
        if data.model == SPIKED:
            raise ValueError(f"{args.results_dir} was trained on spiked synthetic data: SAELens needs a model and hook")
        folder = export_to_saelens(load_sae(Path(args.results_dir) / "checkpoint.safetensors"), args.out,
                                   model_name=data.model, hook_name=data.hook,
                                   normalize_activations="constant_norm_rescale" if data.normalize else "none",
                                   context_size=data.ctx_len)
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
