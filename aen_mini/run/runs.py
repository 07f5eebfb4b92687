"""A training run from a model's activations to a results folder, and its evaluation in the model.

This is what ``python -m aen_mini train`` and ``eval`` do, and what chapters 5 and 6 call. A results folder
holds ``checkpoint.safetensors`` (the SAE, optimiser and data position), ``config.json`` (this RunConfig) and
``metrics.json`` (training history and held-out SAE metrics); ``eval`` adds ``eval.json`` (spliced metrics).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from aen_mini.io.atomic import atomic_write_text
from aen_mini.io.checkpoint import load_checkpoint, load_sae
from aen_mini.lm.models import DEFAULT_OFFLINE_HOOK, DEFAULT_OFFLINE_MODEL
from aen_mini.run.planning import parse_count
from aen_mini.sae import SAE, hyperparameter_names, make_sae
from aen_mini.run.runfolder import RunFolderLock, check_out_folder, clear_run
from aen_mini.train.loop import TrainConfig, load_resumable, train
from aen_mini.validate import (check_choice, check_device, check_in_range, check_nonnegative, check_nonnegative_int,
                               check_positive_int, check_seed)

SPIKED = "spiked"  # the synthetic data of chapter 3 instead of a language model
SAE_ARGS = {"l1": "l1_coeff", "l2": "l2_coeff", "k": "k", "gamma": "gamma", "ema_beta": "ema_beta", "ref_pct": "ref_pct",
            "warmup_start": "warmup_start", "warmup_steps": "warmup_steps", "aux_coeff": "aux_coeff",
            "dead_after_tokens": "dead_after_tokens"}


@dataclass
class RunConfig:
    model: str = DEFAULT_OFFLINE_MODEL  # SmolLM2-135M-Instruct, offline
    hook: str = DEFAULT_OFFLINE_HOOK
    sae: str = "aen"
    latents: int = 4096
    tokens: int | str = "1M"
    batch_size: int = 8192
    lr: float = 1e-3
    lr_warmup_steps: int = 0
    lr_decay_start: float = 0.8
    grad_clip: float = 1.0
    # SAE hyperparameters: None leaves the variant's default; a value the variant lacks is an error
    l1: float | None = None
    l2: float | None = None
    k: int | None = None
    gamma: float | None = None
    ema_beta: float | None = None
    ref_pct: float | None = None
    warmup_start: int | None = None
    warmup_steps: int | None = None
    aux_coeff: float | None = None
    dead_after_tokens: int | None = None
    # data
    corpus: str = "english"  # "english" (offline, real prose), "stdlib", a file or folder of text, or "hf:DATASET" (online)
    ctx_len: int = 128
    max_contexts: int | None = None
    eval_contexts: int = 32  # held out from training: the last contexts of the corpus
    normalize: bool = True  # per-token rescale to norm sqrt(d), as the authors do
    buffer_rows: int = 65_536
    contexts_per_chunk: int = 64
    rho: float = 0.0  # model "spiked" only
    # execution
    device: str = "cpu"
    precision: str = "fp32"
    fast: bool = False
    parallel: str = "data"  # under torchrun: "data" (DDP) or "latent" (latent-sharded)
    seed: int = 0
    checkpoint_every: int = 0  # 0: only at the end
    out: str = "runs/latest"
    progress: bool = True
    target_l0: float | None = None  # calibrate l1 (search_l1, whole runs) to this held-out L0 instead of giving l1
    calibration_trials: int = 4  # most calibration runs for target_l0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the run

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every setting's type and range (a file's ``"normalize": "false"`` is refused, not read as true);
        run_training calls it again, so settings changed after construction are checked too."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), str(f.type))
        self.tokens = parse_count(self.tokens)
        for name in ("latents", "batch_size", "ctx_len", "eval_contexts", "buffer_rows", "contexts_per_chunk",
                     "calibration_trials"):
            check_positive_int(name, getattr(self, name))
        for name in ("lr_warmup_steps", "checkpoint_every"):
            check_nonnegative_int(name, getattr(self, name))
        if self.max_contexts is not None:
            check_positive_int("max_contexts", self.max_contexts)
        check_in_range("lr", self.lr, 0.0, 1.0, low_open=True)
        check_in_range("lr_decay_start", self.lr_decay_start, 0.0, 1.0)
        check_nonnegative("grad_clip", self.grad_clip)
        check_in_range("rho", self.rho, 0.0, 1.0, high_open=True)
        check_seed("seed", self.seed)
        check_choice("parallel", self.parallel, ["data", "latent"])
        check_choice("precision", self.precision, ["fp32", "bf16"])
        if not self.out:
            raise ValueError("out must name a folder, got ''")
        if self.tokens < self.batch_size:
            raise ValueError(f"tokens={self.tokens} is less than one batch (batch_size={self.batch_size})")
        if self.target_l0 is not None:
            check_in_range("target_l0", self.target_l0, 0.0, float(self.latents), low_open=True)
            if self.l1 is not None:
                raise ValueError("give either l1 or target_l0 (which calibrates l1), not both")
            if "l1_coeff" not in hyperparameter_names(self.sae):
                raise ValueError(f"target_l0 calibrates l1, but the {self.sae} SAE has no l1 (TopK sets L0 with k)")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size

    def sae_hyperparameters(self) -> dict[str, Any]:
        """The SAE's constructor arguments: the settings given, and for the ones left out the run defaults below
        (the variant's own defaults are meant for hand-built SAEs)."""
        chosen = {SAE_ARGS[name]: getattr(self, name) for name in SAE_ARGS if getattr(self, name) is not None}
        allowed = hyperparameter_names(self.sae)
        for name, default in run_defaults(self.sae, self.steps, self.latents, chosen.get("l1_coeff")).items():
            if name in allowed:
                chosen.setdefault(name, default)
        wrong = sorted(name for name in chosen if name not in allowed)
        if wrong:
            raise ValueError(f"the {self.sae} SAE has no hyperparameter(s) {wrong}; it takes {allowed}")
        return chosen

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown run setting(s) {unknown}; valid settings: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        """Read a run from JSON, or from TOML on Python >= 3.11: a flat table of settings, or a results folder's
        config.json (whose ``data`` and ``sae_config`` records are dropped). Errors name the file."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"config {path} is a folder; give a .json or .toml file of run settings")
        if not path.exists():
            raise FileNotFoundError(f"config {path} does not exist")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"config {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ValueError(f"config {path}: reading TOML needs Python >= 3.11; use a .json file") from None
            try:
                values = tomllib.loads(text)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"config {path} is not valid TOML ({err})") from None
        else:
            try:
                values = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"config {path} is not valid JSON ({err})") from None
        if not isinstance(values, dict):
            raise ValueError(f"config {path} must hold an object of settings ({{\"sae\": \"aen\", ...}}), "
                             f"got a {type(values).__name__}")
        values = {k: v for k, v in values.items() if k not in RESULT_RECORDS}
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as err:
            raise ValueError(f"config {path}: {err}") from None


RESULT_RECORDS = ("data", "sae_config", "data_settings", "calibration")  # what run_training adds to config.json


def _check_type(name: str, value: Any, annotation: str) -> None:
    """One setting against its annotation: booleans must be booleans, numbers numbers, strings strings."""
    kinds = {"bool": (bool,), "str": (str,), "int": (int,), "float": (int, float), "int | str": (int, str),
             "dict[str, Any]": (dict,)}
    optional = annotation.endswith(" | None")
    if value is None and optional:
        return
    allowed = kinds[annotation.removesuffix(" | None")]
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        wanted = {"bool": "true or false", "str": "a string", "int": "an integer", "float": "a number",
                  "int | str": "a count (8192, '25k', '204.8M')", "dict[str, Any]": "a table"}[annotation.removesuffix(" | None")]
        raise ValueError(f"{name} must be {wanted}{' (or left out)' if optional else ''}, got {value!r}")


def run_defaults(variant: str, steps: int, latents: int, l1: float | None) -> dict[str, Any]:
    """What a run uses for the hyperparameters it is not given, per variant. Adaptive reweighting starts after a
    quarter of training and ramps in over the next quarter, on a faster EMA (0.99): weights from step 0 would
    reweight by the usage of an untrained SAE. AEN's l2 is a tenth of its l1. An L1 penalty of 1e-3 (the classes'
    default, meant for hand-built SAEs) leaves nearly every latent active, so a run without l1 or target_l0 takes
    one on the scale that chapter 5's benchmark calibrated for normalised activations (about 0.1-1 for L0 32-128).
    TopK keeps k = 32, at most a quarter of the latents."""
    l1 = DEFAULT_L1.get(variant) if l1 is None else l1
    defaults: dict[str, Any] = {"l1_coeff": l1, "k": max(1, min(32, latents // 4))}
    if variant in ("aen", "adaptive_lasso"):
        defaults.update(ema_beta=0.99, warmup_start=steps // 4, warmup_steps=steps // 4)
    if variant in ("aen", "elastic_net"):
        defaults["l2_coeff"] = 0.1 * l1
    return defaults


DEFAULT_L1 = {"relu_l1": 1.0, "elastic_net": 1.0, "adaptive_lasso": 0.3, "aen": 0.3}
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


def build_data(cfg: RunConfig, rank: int = 0, world_size: int = 1) -> RunData:
    """The training source and held-out data for ``cfg``. Under data parallelism each of ``world_size`` ranks
    trains on its own shard: every world_size-th batch of the spiked stream, or every world_size-th context."""
    if cfg.model == SPIKED:
        from aen_mini.data.strided import StridedSource
        from aen_mini.data.synthetic import SpikedSource

        source = SpikedSource(rho=cfg.rho, seed=cfg.seed)  # one dictionary for every rank
        x, _ = source.sample(8192, seed=10_000 + cfg.seed)
        if world_size > 1:
            source = StridedSource(source, rank, world_size)
        return RunData(source, eval_activations=x, label=f"spiked synthetic data, rho={cfg.rho}",
                       settings={"model": SPIKED, "rho": cfg.rho})
    from aen_mini.data.activations import LMActivationSource, harvest
    from aen_mini.data.text import model_tokens
    from aen_mini.data.strided import rank_seed
    from aen_mini.lm.models import load_model

    model = load_model(cfg.model, device=cfg.device)
    model.check_hook(cfg.hook)
    tokens = model_tokens(model, cfg.corpus, ctx_len=cfg.ctx_len, max_contexts=cfg.max_contexts)
    if len(tokens) <= cfg.eval_contexts:
        raise ValueError(f"the corpus gives {len(tokens)} contexts of {cfg.ctx_len} tokens; "
                         f"{cfg.eval_contexts} are held out for evaluation, which leaves none to train on")
    train_tokens, eval_tokens = tokens[:len(tokens) - cfg.eval_contexts], tokens[len(tokens) - cfg.eval_contexts:]
    source = LMActivationSource(model, train_tokens[rank::world_size], cfg.hook, buffer_rows=cfg.buffer_rows,
                                contexts_per_chunk=cfg.contexts_per_chunk, normalize=cfg.normalize,
                                seed=rank_seed(cfg.seed, rank), device=cfg.device)
    held_out = harvest(model, eval_tokens, cfg.hook, batch_size=cfg.contexts_per_chunk).float()
    if source.normalizer is not None:
        held_out = source.normalizer.normalize(held_out)[0]
    settings = {"model": cfg.model, "hook": cfg.hook, "ctx_len": cfg.ctx_len, "normalize": cfg.normalize,
                "corpus_sha256": _token_digest(train_tokens), "buffer_rows": cfg.buffer_rows,
                "contexts_per_chunk": cfg.contexts_per_chunk}
    return RunData(source, model, eval_tokens, held_out, label=model.info.label, settings=settings)


def run_training(cfg: RunConfig, data: RunData | None = None, resume: bool = False, overwrite: bool = False) -> Path:
    """Train the SAE of ``cfg`` and write its results folder; return the folder. Under torchrun every rank calls
    this; rank 0 alone writes.

    Everything is checked before anything is written: the settings, the output folder (not a file, writable, not
    holding a run unless ``resume`` or ``overwrite``), the lock on it (one run per folder), and on resume that the
    checkpoint fits this SAE, trainer and data. config.json and metrics.json are written atomically."""
    from aen_mini.train.launch import setup_from_env

    if resume and overwrite:
        raise ValueError("give resume (continue the run in out) or overwrite (replace it), not both")
    cfg.validate()
    check_device("device", cfg.device)
    out = Path(cfg.out)
    checkpoint = out / "checkpoint.safetensors"
    with setup_from_env(cfg.device) as ctx:  # outside torchrun: one process on cfg.device
        if ctx.is_main:  # rank 0 alone writes; another rank checking later could see rank 0's new config.json
            check_out_folder(out, resume=resume, overwrite=overwrite)  # before building data: that can take minutes
        with RunFolderLock(out) if ctx.is_main else nullcontext():
            device = ctx.device
            if data is None:  # latent sharding broadcasts rank 0's batches, so only data parallelism shards the data
                sharded = ctx.launched and cfg.parallel == "data"
                data = build_data(cfg, ctx.rank if sharded else 0, ctx.world_size if sharded else 1)
            if data.eval_activations is None or len(data.eval_activations) == 0:
                raise ValueError("the run has no held-out activations to evaluate on (eval_contexts gave none)")
            resuming = resume and checkpoint.exists()
            calibration = None
            if cfg.target_l0 is not None and ctx.launched:
                raise ValueError("target_l0 calibrates in one process: run it without torchrun, then pass its l1")
            if cfg.target_l0 is not None and not resuming:  # a resumed run keeps the checkpoint's l1
                calibration = calibrate_l1(cfg, data, device)
                cfg = replace(cfg, l1=calibration["l1_coeff"], target_l0=None)
            elif cfg.target_l0 is not None:
                cfg = replace(cfg, l1=load_checkpoint(checkpoint).sae.config()["l1_coeff"], target_l0=None)
            sae = make_sae(cfg.sae, data.source.d_in, cfg.latents, seed=cfg.seed, **cfg.sae_hyperparameters())
            train_cfg = _train_config(cfg, device, checkpoint)
            if resuming:
                load_resumable(checkpoint, sae, train_cfg, data.settings)
            if ctx.is_main:
                if overwrite and not resuming:
                    clear_run(out)
                record = {**asdict(cfg), "data": data.label, "sae_config": sae.config(), "data_settings": data.settings}
                if calibration is not None:
                    record["calibration"] = calibration
                atomic_write_text(out / "config.json", json.dumps(record, indent=2))
            result = train(sae, data.source, train_cfg, resume=checkpoint if resuming else None,
                           parallel=ctx.strategy(cfg.parallel), data=data.settings)
            if ctx.is_main:
                trained = load_sae(checkpoint, device)  # the whole SAE, also when each rank held a shard
                held_out = sae_metrics(trained, data.eval_activations)
                metrics = {"data": data.label, "steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size,
                           "wall_s": result.wall_s, "history": result.history, "held_out": held_out}
                atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
                warn_if_not_sparse(held_out["l0"], cfg.latents, calibration and calibration["target_l0"])
    return out


def _train_config(cfg: RunConfig, device: str, checkpoint: Path | None) -> TrainConfig:
    return TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, lr_warmup_steps=cfg.lr_warmup_steps,
                       lr_decay_start=cfg.lr_decay_start, grad_clip=cfg.grad_clip, seed=cfg.seed, device=device,
                       precision=cfg.precision, fast=cfg.fast,
                       checkpoint_every=(cfg.checkpoint_every or cfg.steps) if checkpoint else 0, checkpoint_path=str(checkpoint) if checkpoint else None,
                       progress=cfg.progress, log_every=max(1, min(100, cfg.steps // 20)))


def calibrate_l1(cfg: RunConfig, data: RunData, device: str) -> dict[str, Any]:
    """Search l1 so that the held-out L0 is near ``cfg.target_l0`` (aen_mini.eval.calibrate.search_l1): each trial is a
    whole run of ``cfg`` (in memory, nothing written) from the same starting point, so the chosen l1 gives that L0
    when the run is trained again. Returns search_l1's record plus the target."""
    from aen_mini.eval.calibrate import search_l1

    state = data.source.state_dict()
    scale = float(data.eval_activations.float().norm(dim=1).mean()) / math.sqrt(data.source.d_in)
    # The first guess on the scale of one latent's share of a normalised activation (as benchmarks/llm.py), times
    # the data's norm per dimension (1 for normalised activations); adaptive L1 is weaker per unit of l1.
    start = 0.5 * math.sqrt(data.source.d_in / cfg.target_l0) * scale * (DEFAULT_L1[cfg.sae] / DEFAULT_L1["relu_l1"])

    def measure(l1: float) -> float:
        data.source.load_state_dict(state)  # every trial sees the batches the final run will see
        trial = replace(cfg, l1=l1, target_l0=None, progress=False)
        sae = make_sae(trial.sae, data.source.d_in, trial.latents, seed=trial.seed, **trial.sae_hyperparameters())
        train(sae, data.source, _train_config(trial, device, None))
        l0 = sae_metrics(sae, data.eval_activations)["l0"]
        if cfg.progress:
            print(f"calibration run {len(trials) + 1}: l1={l1:.4g} -> held-out L0 {l0:.1f} (target {cfg.target_l0:g})",
                  file=sys.stderr, flush=True)
        trials.append(l0)
        return l0

    trials: list[float] = []

    found = search_l1(measure, cfg.target_l0, start, trials=cfg.calibration_trials)
    data.source.load_state_dict(state)
    if not found["converged"]:
        warnings.warn(f"target_l0={cfg.target_l0:g}: after {len(found['trials'])} calibration runs the closest held-out "
                      f"L0 is {found['l0']:.1f} (l1={found['l1_coeff']:.3g}); more calibration_trials may get closer",
                      stacklevel=2)
    return {**found, "target_l0": cfg.target_l0}


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


def read_results_config(results_dir: str | Path) -> RunConfig:
    """The RunConfig of a results folder written by run_training; errors name the folder and what is missing."""
    results_dir = Path(results_dir)
    config_path = results_dir / "config.json"
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist" if not results_dir.exists()
                                else f"{results_dir} is a file, not a results folder")
    if not config_path.is_file():
        raise FileNotFoundError(f"{results_dir} is not a results folder: {config_path.name} is missing")
    try:
        saved = json.loads(config_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path} is not a JSON file written by `aen_mini train` ({err})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{config_path} must hold an object of run settings, got a {type(saved).__name__}")
    missing = [key for key in ("model", "hook", "sae", "normalize", "ctx_len") if key not in saved]
    if missing:
        raise ValueError(f"{config_path} lacks {', '.join(missing)}: it was not written by `aen_mini train`")
    try:
        return RunConfig.from_dict({k: v for k, v in saved.items() if k not in RESULT_RECORDS})
    except (ValueError, TypeError) as err:
        raise ValueError(f"{config_path}: {err}") from None

def evaluate_run(results_dir: str | Path, device: str | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Splice the run's SAE into its model (CE, KL, CE recovered; for encoders the embedding change) and write
    ``eval.json``."""
    from aen_mini.eval.splice import spliced_metrics

    results_dir = Path(results_dir)
    cfg = read_results_config(results_dir)
    if device is not None:
        cfg.device = device
    check_device("device", cfg.device)
    if cfg.model == SPIKED:
        raise ValueError("a run on spiked synthetic data has no model to splice into")
    data = build_data(cfg)
    sae = load_sae(results_dir / "checkpoint.safetensors", cfg.device)
    report = {"model": data.label, "hook": cfg.hook, "sae": cfg.sae, "latents": cfg.latents,
              "eval_contexts": cfg.eval_contexts, **sae_metrics(sae, data.eval_activations),
              **spliced_metrics(data.model, sae, data.eval_tokens, cfg.hook,
                                data.source.normalizer, batch_size=batch_size)}
    atomic_write_text(results_dir / "eval.json", json.dumps(report, indent=2))
    return report
