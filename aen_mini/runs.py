"""A training run from a model's activations to a results folder, and its evaluation in the model.

This is what ``python -m aen_mini train`` and ``eval`` do, and what chapters 5 and 6 call. A results folder
holds ``checkpoint.safetensors`` (the SAE, optimiser and data position), ``config.json`` (this RunConfig) and
``metrics.json`` (training history and held-out SAE metrics); ``eval`` adds ``eval.json`` (spliced metrics).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from aen_mini.atomic import atomic_write_text
from aen_mini.checkpoint import load_sae
from aen_mini.models import DEFAULT_OFFLINE_HOOK, DEFAULT_OFFLINE_MODEL
from aen_mini.planning import parse_count
from aen_mini.sae import SAE, hyperparameter_names, make_sae
from aen_mini.train import TrainConfig, train
from aen_mini.validate import check_choice, check_positive_int

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
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded with the run

    def __post_init__(self) -> None:
        self.tokens = parse_count(self.tokens)
        check_positive_int("latents", self.latents)
        check_positive_int("batch_size", self.batch_size)
        check_choice("parallel", self.parallel, ["data", "latent"])
        if self.tokens < self.batch_size:
            raise ValueError(f"tokens={self.tokens} is less than one batch (batch_size={self.batch_size})")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size

    def sae_hyperparameters(self) -> dict[str, Any]:
        chosen = {SAE_ARGS[name]: getattr(self, name) for name in SAE_ARGS if getattr(self, name) is not None}
        allowed = hyperparameter_names(self.sae)
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
        """Read a run from JSON, or from TOML on Python >= 3.11."""
        path = Path(path)
        text = path.read_text()
        if path.suffix == ".toml":
            import tomllib

            return cls.from_dict(tomllib.loads(text))
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from None


@dataclass
class RunData:
    """What a run trains and evaluates on."""

    source: Any
    model: Any = None  # aen_mini.models.LanguageModel, None for spiked data
    eval_tokens: Any = None
    eval_activations: torch.Tensor | None = None  # held-out SAE inputs (normalised like training)
    label: str = ""


def build_data(cfg: RunConfig, rank: int = 0, world_size: int = 1) -> RunData:
    """The training source and held-out data for ``cfg``. Under data parallelism each of ``world_size`` ranks
    trains on its own shard: every world_size-th batch of the spiked stream, or every world_size-th context."""
    if cfg.model == SPIKED:
        from aen_mini.distributed import StridedSource
        from aen_mini.data.synthetic import SpikedSource

        source = SpikedSource(rho=cfg.rho, seed=cfg.seed)  # one dictionary for every rank
        x, _ = source.sample(8192, seed=10_000 + cfg.seed)
        if world_size > 1:
            source = StridedSource(source, rank, world_size)
        return RunData(source, eval_activations=x, label=f"spiked synthetic data, rho={cfg.rho}")
    from aen_mini.data.activations import LMActivationSource, harvest
    from aen_mini.data.text import model_tokens
    from aen_mini.distributed import DistContext
    from aen_mini.models import load_model

    model = load_model(cfg.model, device=cfg.device)
    model.check_hook(cfg.hook)
    tokens = model_tokens(model, cfg.corpus, ctx_len=cfg.ctx_len, max_contexts=cfg.max_contexts)
    if len(tokens) <= cfg.eval_contexts:
        raise ValueError(f"the corpus gives {len(tokens)} contexts of {cfg.ctx_len} tokens; "
                         f"{cfg.eval_contexts} are held out for evaluation, which leaves none to train on")
    train_tokens, eval_tokens = tokens[:len(tokens) - cfg.eval_contexts], tokens[len(tokens) - cfg.eval_contexts:]
    source = LMActivationSource(model, train_tokens[rank::world_size], cfg.hook, buffer_rows=cfg.buffer_rows,
                                contexts_per_chunk=cfg.contexts_per_chunk, normalize=cfg.normalize,
                                seed=DistContext(rank=rank).rank_seed(cfg.seed), device=cfg.device)
    held_out = harvest(model, eval_tokens, cfg.hook, batch_size=cfg.contexts_per_chunk).float()
    if source.normalizer is not None:
        held_out = source.normalizer.normalize(held_out)[0]
    return RunData(source, model, eval_tokens, held_out, label=model.info.label)


def run_training(cfg: RunConfig, data: RunData | None = None, resume: bool = False) -> Path:
    """Train the SAE of ``cfg`` and write its results folder; return the folder. Under torchrun every rank calls
    this; rank 0 alone writes."""
    from aen_mini.distributed import setup_from_env

    out = Path(cfg.out)
    checkpoint = out / "checkpoint.safetensors"
    with setup_from_env(cfg.device) as ctx:  # outside torchrun: one process on cfg.device
        device = ctx.device
        if data is None:  # latent sharding broadcasts rank 0's batches, so only data parallelism shards the data
            sharded = ctx.launched and cfg.parallel == "data"
            data = build_data(cfg, ctx.rank if sharded else 0, ctx.world_size if sharded else 1)
        sae = make_sae(cfg.sae, data.source.d_in, cfg.latents, seed=cfg.seed, **cfg.sae_hyperparameters())
        train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, lr_warmup_steps=cfg.lr_warmup_steps,
                                lr_decay_start=cfg.lr_decay_start, grad_clip=cfg.grad_clip, seed=cfg.seed, device=device,
                                precision=cfg.precision, fast=cfg.fast, checkpoint_every=cfg.checkpoint_every or cfg.steps,
                                checkpoint_path=str(checkpoint), progress=cfg.progress,
                                log_every=max(1, min(100, cfg.steps // 20)))
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.json", json.dumps({**asdict(cfg), "data": data.label,
                                                                 "sae_config": sae.config()}, indent=2))
        result = train(sae, data.source, train_cfg, resume=checkpoint if resume and checkpoint.exists() else None,
                       parallel=ctx.strategy(cfg.parallel))
        if ctx.is_main:
            trained = load_sae(checkpoint, device)  # the whole SAE, also when each rank held a shard
            metrics = {"data": data.label, "steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size,
                       "wall_s": result.wall_s, "history": result.history,
                       "held_out": sae_metrics(trained, data.eval_activations)}
            atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return out


@torch.no_grad()
def sae_metrics(sae: SAE, x: torch.Tensor) -> dict[str, float]:
    """Dead %, L0, EV, MSE and shrinkage of ``sae`` on held-out inputs ``x`` (in the SAE's input space)."""
    from aen_mini.metrics import evaluate

    sae.eval()
    device = next(sae.parameters()).device
    return evaluate(sae, x.to(device=device, dtype=torch.float32))


def evaluate_run(results_dir: str | Path, device: str | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Splice the run's SAE into its model (CE, KL, CE recovered; for encoders the embedding change) and write
    ``eval.json``."""
    from aen_mini.splice import spliced_metrics

    results_dir = Path(results_dir)
    config_path = results_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{results_dir} is not a results folder: {config_path.name} is missing")
    saved = json.loads(config_path.read_text())
    for key in ("data", "sae_config"):
        saved.pop(key, None)
    cfg = RunConfig.from_dict(saved)
    if device is not None:
        cfg.device = device
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
