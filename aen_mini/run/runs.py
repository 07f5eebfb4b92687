"""A training run from a model's activations to a results folder (``run(spec)``), and its evaluation in the model
(``evaluate(folder)``).

This is what ``python -m aen_mini train`` and ``eval`` do, and what chapters 5 and 6 call. A results folder holds
``checkpoint.safetensors`` (the SAE, optimiser and data position), ``config.json`` (the RunSpec, aen_mini.run.spec)
and ``metrics.json`` (training history and held-out SAE metrics); ``evaluate`` adds ``eval.json`` (spliced metrics).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from aen_mini.io.atomic import atomic_write_text
from aen_mini.io.checkpoint import load_checkpoint, load_sae
from aen_mini.run.runfolder import RunFolderLock, check_out_folder, clear_run
from aen_mini.run.spec import DEFAULT_L1, SPIKED, RunConfig, RunSpec, read_settings
from aen_mini.sae import SAE, variant_class
from aen_mini.train.config import TrainConfig
from aen_mini.train.loop import load_resumable, train
from aen_mini.validate import check_device

SPARSE_FRACTION = 0.25  # a trained L0 above this share of the latents (or 4x target_l0) is warned about


@dataclass
class RunData:
    """What a run trains and evaluates on."""

    source: Any
    model: Any = None  # aen_mini.lm.models.LanguageModel, None for spiked data
    eval_tokens: Any = None
    eval_activations: torch.Tensor | None = None  # held-out SAE inputs (normalised like training)
    label: str = ""
    settings: dict[str, Any] | None = None  # what identifies the activations; a resume on other ones is refused


def _token_digest(tokens: Any) -> str:
    """SHA-256 of the training contexts (token ids and masks): the corpus identity a resume is checked against."""
    h = hashlib.sha256()
    for t in (tokens.tokens, tokens.mask):
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def as_spec(cfg: RunSpec | RunConfig) -> RunSpec:
    """A run's RunSpec (a RunConfig, the earlier flat form, converted)."""
    if isinstance(cfg, RunSpec):
        return cfg
    if isinstance(cfg, RunConfig):
        return cfg.to_spec()
    raise TypeError(f"a run is described by a RunSpec (aen_mini.run.spec), got {type(cfg).__name__}")


def build_data(spec: RunSpec | RunConfig, rank: int = 0, world_size: int = 1) -> RunData:
    """The training source and held-out data of a run. Under data parallelism each of ``world_size`` ranks
    trains on its own shard: every world_size-th batch of the spiked stream, or every world_size-th context."""
    spec = as_spec(spec)
    cfg, seed, device = spec.data, spec.train.seed, spec.train.device
    if cfg.model == SPIKED:
        from aen_mini.data.strided import StridedSource
        from aen_mini.data.synthetic import SpikedSource

        source = SpikedSource(rho=cfg.rho, seed=seed)  # one dictionary for every rank
        x, _ = source.sample(8192, seed=10_000 + seed)
        if world_size > 1:
            source = StridedSource(source, rank, world_size)
        return RunData(source, eval_activations=x, label=f"spiked synthetic data, rho={cfg.rho}",
                       settings={"model": SPIKED, "rho": cfg.rho})
    from aen_mini.data.activations import LMActivationSource, harvest
    from aen_mini.data.strided import rank_seed
    from aen_mini.data.text import model_tokens
    from aen_mini.lm.models import load_model

    model = load_model(cfg.model, device=device)
    model.check_hook(cfg.hook)
    tokens = model_tokens(model, cfg.corpus, ctx_len=cfg.ctx_len, max_contexts=cfg.max_contexts)
    if len(tokens) <= cfg.eval_contexts:
        raise ValueError(f"the corpus gives {len(tokens)} contexts of {cfg.ctx_len} tokens; "
                         f"{cfg.eval_contexts} are held out for evaluation, which leaves none to train on")
    train_tokens, eval_tokens = tokens[:len(tokens) - cfg.eval_contexts], tokens[len(tokens) - cfg.eval_contexts:]
    source = LMActivationSource(model, train_tokens[rank::world_size], cfg.hook, buffer_rows=cfg.buffer_rows,
                                contexts_per_chunk=cfg.contexts_per_chunk, normalize=cfg.normalize,
                                seed=rank_seed(seed, rank), device=device)
    held_out = harvest(model, eval_tokens, cfg.hook, batch_size=cfg.contexts_per_chunk).float()
    if source.normalizer is not None:
        held_out = source.normalizer.normalize(held_out)[0]
    settings = {"model": cfg.model, "hook": cfg.hook, "ctx_len": cfg.ctx_len, "normalize": cfg.normalize,
                "corpus_sha256": _token_digest(train_tokens), "buffer_rows": cfg.buffer_rows,
                "contexts_per_chunk": cfg.contexts_per_chunk}
    return RunData(source, model, eval_tokens, held_out, label=model.info.label, settings=settings)


def run(spec: RunSpec | RunConfig, data: RunData | None = None, resume: bool = False, overwrite: bool = False) -> Path:
    """Train the SAE of ``spec`` and write its results folder; return the folder. Under torchrun every rank calls
    this; rank 0 alone writes.

    Everything is checked before anything is written: the settings, the output folder (not a file, writable, not
    holding a run unless ``resume`` or ``overwrite``), the lock on it (one run per folder), and on resume that the
    checkpoint fits this SAE, trainer and data. config.json and metrics.json are written atomically."""
    from aen_mini.train.launch import setup_from_env

    if resume and overwrite:
        raise ValueError("give resume (continue the run in out) or overwrite (replace it), not both")
    spec = RunSpec.from_dict(as_spec(spec).to_dict())  # checked again: a spec may have been edited after construction
    check_device("device", spec.train.device)
    out = Path(spec.out)
    checkpoint = out / "checkpoint.safetensors"
    with setup_from_env(spec.train.device) as ctx:  # outside torchrun: one process on the spec's device
        if ctx.is_main:  # rank 0 alone writes; another rank checking later could see rank 0's new config.json
            check_out_folder(out, resume=resume, overwrite=overwrite)  # before building data: that can take minutes
        with RunFolderLock(out) if ctx.is_main else nullcontext():
            if data is None:  # latent sharding broadcasts rank 0's batches, so only data parallelism shards the data
                sharded = ctx.launched and spec.parallel.mode == "data"
                data = build_data(spec, ctx.rank if sharded else 0, ctx.world_size if sharded else 1)
            if data.eval_activations is None or len(data.eval_activations) == 0:
                raise ValueError("the run has no held-out activations to evaluate on (eval_contexts gave none)")
            resuming = resume and checkpoint.exists()
            calibration = None
            if spec.target_l0 is not None and ctx.launched:
                raise ValueError("target_l0 calibrates in one process: run it without torchrun, then pass its l1")
            if spec.target_l0 is not None and not resuming:  # a resumed run keeps the checkpoint's l1
                calibration = calibrate_l1(spec, data, ctx.device)
                spec = spec.updated(**{"sae.l1_coeff": calibration["l1_coeff"], "target_l0": None})
            elif spec.target_l0 is not None:
                l1 = load_checkpoint(checkpoint).sae.config()["l1_coeff"]
                spec = spec.updated(**{"sae.l1_coeff": l1, "target_l0": None})
            sae = _make_sae(spec, data.source.d_in)
            train_cfg = replace(_train_config(spec, with_checkpoint=True), device=ctx.device)
            if resuming:
                load_resumable(checkpoint, sae, train_cfg, data.settings)
            if ctx.is_main:
                if overwrite and not resuming:
                    clear_run(out)
                record = {**spec.to_dict(), "data_label": data.label, "sae_config": sae.config(),
                          "data_settings": data.settings}
                if calibration is not None:
                    record["calibration"] = calibration
                atomic_write_text(out / "config.json", json.dumps(record, indent=2))
            result = train(sae, data.source, train_cfg, resume=checkpoint if resuming else None,
                           parallel=ctx.strategy(spec.parallel.mode), data=data.settings)
            if ctx.is_main:
                trained = load_sae(checkpoint, ctx.device)  # the whole SAE, also when each rank held a shard
                held_out = sae_metrics(trained, data.eval_activations)
                metrics = {"data": data.label, "steps": spec.steps, "tokens": spec.steps * spec.train.batch_size,
                           "wall_s": result.wall_s, "history": result.history, "held_out": held_out}
                atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
                warn_if_not_sparse(held_out["l0"], spec.sae.latents, calibration and calibration["target_l0"])
    return out


run_training = run  # the name chapters 5-6 and benchmarks/llm.py call


def _make_sae(spec: RunSpec, d_in: int) -> SAE:
    cfg = spec.sae.config(d_in, spec.steps, spec.train.seed)
    return variant_class(spec.sae.variant)(cfg)


def _train_config(spec: RunSpec, with_checkpoint: bool) -> TrainConfig:
    """The run's TrainConfig: checkpoints at ``checkpoint_every`` (0: at the end) when ``with_checkpoint``, a log
    record at least every twentieth of the run (log_every 0: only at the end)."""
    steps = spec.steps
    checkpoint = dict(checkpoint_every=spec.train.checkpoint_every or steps) if with_checkpoint else \
        dict(checkpoint_every=0, checkpoint_path=None)
    log_every = max(1, min(spec.train.log_every, steps // 20)) if spec.train.log_every else 0
    return replace(spec.train, log_every=log_every, **checkpoint)


def calibrate_l1(spec: RunSpec, data: RunData, device: str) -> dict[str, Any]:
    """Search l1 so that the held-out L0 is near ``spec.target_l0`` (aen_mini.eval.calibrate.search_l1): each trial
    is a whole run of ``spec`` (in memory, nothing written) from the same starting point, so the chosen l1 gives that
    L0 when the run is trained again. Returns search_l1's record plus the target."""
    from aen_mini.eval.calibrate import search_l1

    state = data.source.state_dict()
    scale = float(data.eval_activations.float().norm(dim=1).mean()) / math.sqrt(data.source.d_in)
    variant = spec.sae.variant
    # The first guess on the scale of one latent's share of a normalised activation (as benchmarks/llm.py), times
    # the data's norm per dimension (1 for normalised activations); adaptive L1 is weaker per unit of l1.
    start = 0.5 * math.sqrt(data.source.d_in / spec.target_l0) * scale * (DEFAULT_L1[variant] / DEFAULT_L1["relu_l1"])

    def measure(l1: float) -> float:
        data.source.load_state_dict(state)  # every trial sees the batches the final run will see
        trial = spec.updated(**{"sae.l1_coeff": l1, "target_l0": None, "train.progress": False})
        sae = _make_sae(trial, data.source.d_in)
        train(sae, data.source, replace(_train_config(trial, with_checkpoint=False), device=device))
        l0 = sae_metrics(sae, data.eval_activations)["l0"]
        if spec.train.progress:
            print(f"calibration run {len(trials) + 1}: l1={l1:.4g} -> held-out L0 {l0:.1f} (target {spec.target_l0:g})",
                  file=sys.stderr, flush=True)
        trials.append(l0)
        return l0

    trials: list[float] = []

    found = search_l1(measure, spec.target_l0, start, trials=spec.calibration_trials)
    data.source.load_state_dict(state)
    if not found["converged"]:
        warnings.warn(f"target_l0={spec.target_l0:g}: after {len(found['trials'])} calibration runs the closest held-out "
                      f"L0 is {found['l0']:.1f} (l1={found['l1_coeff']:.3g}); more calibration_trials may get closer",
                      stacklevel=2)
    return {**found, "target_l0": spec.target_l0}


def warn_if_not_sparse(l0: float, latents: int, target_l0: float | None = None) -> str | None:
    """Warn (and return the message) when a trained SAE is far from sparse: its held-out L0 above a quarter of the
    latents, or above 4x the L0 it was calibrated for."""
    limit = SPARSE_FRACTION * latents if target_l0 is None else min(SPARSE_FRACTION * latents, 4 * target_l0)
    if l0 <= limit:
        return None
    message = (f"the trained SAE is far from sparse: held-out L0 {l0:.0f} of {latents} latents"
               + (f" (target {target_l0:g})" if target_l0 is not None else "")
               + ("; raise --l1 or give --target-l0 to calibrate it" if target_l0 is None
                  else "; calibrate with more --calibration-trials or train longer"))
    warnings.warn(message, stacklevel=2)
    return message


@torch.no_grad()
def sae_metrics(sae: SAE, x: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Dead %, L0, EV, MSE and shrinkage of ``sae`` on held-out inputs ``x`` (in the SAE's input space), computed
    ``batch_size`` rows at a time so that memory holds one batch's codes, not the whole set's."""
    from aen_mini.eval.metrics import evaluate_in_batches

    was_training = sae.training
    sae.eval()
    try:
        return evaluate_in_batches(sae, x, batch_size)
    finally:
        sae.train(was_training)


def read_results_config(results_dir: str | Path) -> RunSpec:
    """The RunSpec of a results folder written by ``run`` (also by earlier versions, in flat keys); errors name the
    folder and what is missing."""
    results_dir = Path(results_dir)
    config_path = results_dir / "config.json"
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist" if not results_dir.exists()
                                else f"{results_dir} is a file, not a results folder")
    if not config_path.is_file():
        raise FileNotFoundError(f"{results_dir} is not a results folder: {config_path.name} is missing")
    try:
        saved = read_settings(config_path)
    except ValueError as err:
        raise ValueError(f"{config_path} is not a JSON file written by `aen_mini train` ({err})") from None
    nested = {**saved, **{k: saved[k] for k in ("data", "sae") if isinstance(saved.get(k), dict)}}
    data, sae = nested.get("data", {}), nested.get("sae", {})
    present = {"model": "model" in saved or "model" in data, "hook": "hook" in saved or "hook" in data,
               "sae": isinstance(sae, str) or "variant" in sae, "normalize": "normalize" in saved or "normalize" in data,
               "ctx_len": "ctx_len" in saved or "ctx_len" in data}
    missing = [key for key, there in present.items() if not there]
    if missing:
        raise ValueError(f"{config_path} lacks {', '.join(missing)}: it was not written by `aen_mini train`")
    try:
        return RunSpec.from_dict(saved)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{config_path}: {err}") from None


def evaluate(results_dir: str | Path, device: str | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Splice the run's SAE into its model (CE, KL, CE recovered; for encoders the embedding change) and write
    ``eval.json``."""
    from aen_mini.eval.splice import spliced_metrics

    results_dir = Path(results_dir)
    spec = read_results_config(results_dir)
    if device is not None:
        spec = spec.updated(**{"train.device": device})
    check_device("device", spec.train.device)
    if spec.data.model == SPIKED:
        raise ValueError("a run on spiked synthetic data has no model to splice into")
    data = build_data(spec)
    sae = load_sae(results_dir / "checkpoint.safetensors", spec.train.device)
    report = {"model": data.label, "hook": spec.data.hook, "sae": spec.sae.variant, "latents": spec.sae.latents,
              "eval_contexts": spec.data.eval_contexts, **sae_metrics(sae, data.eval_activations),
              **spliced_metrics(data.model, sae, data.eval_tokens, spec.data.hook,
                                data.source.normalizer, batch_size=batch_size)}
    atomic_write_text(results_dir / "eval.json", json.dumps(report, indent=2))
    return report


evaluate_run = evaluate  # the name chapter 6 calls
