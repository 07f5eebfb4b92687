"""The one typed description of a run: ``RunSpec`` = ``DataSpec`` (which activations) + ``SAESpec`` (the variant,
its size, the hyperparameters given; the variant's own config dataclass is built from it once d_in is known) +
``TrainConfig`` (the trainer's settings, steps derived from ``tokens``) + ``ParallelSpec`` (under torchrun).

``aen_mini.run.runs.run`` trains one, the command line is generated from it (``--data.model``, ``--sae.l1-coeff``,
``--train.lr`` ...), and a results folder's ``config.json`` holds it. Settings come as nested tables
(``{"train": {"lr": 0.001}}``), dotted keys (``"train.lr"``) or the flat keys of earlier versions (``"lr"``,
``"l1"``, mapped by ``FLAT_KEYS``). ``RunConfig`` is that flat form as a dataclass, generated from ``FLAT_KEYS``,
for code written against it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any

from aen_mini.lm.models import DEFAULT_OFFLINE_HOOK, DEFAULT_OFFLINE_MODEL
from aen_mini.run.planning import parse_count
from aen_mini.sae import VARIANTS, SAEConfig, config_class, hyperparameter_names, variant_class
from aen_mini.train.config import TrainConfig
from aen_mini.validate import check_choice, check_in_range, check_positive_int, option

SPIKED = "spiked"  # the synthetic data of chapter 3 instead of a language model
PARALLEL_MODES = ("data", "latent")
# What run() adds to config.json beside the spec (and the earlier versions' names of them).
RESULT_RECORDS = ("data_label", "sae_config", "data_settings", "calibration")
# TrainConfig fields a run sets itself: steps = tokens // batch_size, the checkpoint lives in the results folder.
DERIVED_TRAIN_FIELDS = ("steps", "checkpoint_path")
# An SAE setting the run sets itself: the SAE's seed is the run's seed.
DERIVED_SAE_FIELDS = ("d_in", "d_sae", "seed")


@dataclass
class DataSpec:
    model: str = option(DEFAULT_OFFLINE_MODEL, "model registry name ('spiked': the synthetic data of chapter 3, no "
                                               "model)")
    hook: str = option(DEFAULT_OFFLINE_HOOK, "TransformerLens hook whose activations the SAE learns")
    corpus: str = option("english", "'english' (offline, real prose), 'stdlib' (offline docstrings), a text file or "
                                    "folder, or 'hf:DATASET' (online)")
    ctx_len: int = option(128, "tokens per context")
    max_contexts: int | None = option(None, "use at most this many contexts of the corpus (none: all)")
    eval_contexts: int = option(32, "contexts held out for evaluation (the corpus's last ones; at least 1)")
    normalize: bool = option(True, "rescale every token's activation to norm sqrt(d), as the authors do")
    buffer_rows: int = option(65_536, "rows of the activation shuffle buffer")
    contexts_per_chunk: int = option(64, "contexts harvested per forward pass")
    rho: float = option(0.0, "spiked data only: correlation of the dictionary atoms, in [0, 1)")

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("ctx_len", "eval_contexts", "buffer_rows", "contexts_per_chunk"):
            check_positive_int(name, getattr(self, name))
        if self.max_contexts is not None:
            check_positive_int("max_contexts", self.max_contexts)
        check_in_range("rho", self.rho, 0.0, 1.0, high_open=True)


@dataclass
class SAESpec:
    variant: str = option("aen", f"SAE variant: {', '.join(VARIANTS)}")
    latents: int = option(4096, "number of SAE latents (d_sae)")
    hyperparameters: dict[str, Any] = option(help="the variant's settings given (fields of its config dataclass); "
                                                  "the others take the run defaults", default_factory=dict)

    def __post_init__(self) -> None:
        _check_types(self)
        variant_class(self.variant)  # names the variants when it is not one
        check_positive_int("latents", self.latents)
        allowed = [n for n in hyperparameter_names(self.variant) if n not in DERIVED_SAE_FIELDS]
        wrong = sorted(set(self.hyperparameters) - set(allowed))
        if wrong:
            raise ValueError(f"the {self.variant} SAE has no hyperparameter(s) {wrong}; it takes {allowed}")
        config_class(self.variant)(d_in=1, d_sae=self.latents, **self.resolved(steps=0))  # checks each value by name

    def config(self, d_in: int, steps: int, seed: int) -> SAEConfig:
        """The variant's config dataclass for this run: the hyperparameters given, the run defaults for the rest."""
        return config_class(self.variant)(d_in=d_in, d_sae=self.latents, seed=seed, **self.resolved(steps))

    def resolved(self, steps: int) -> dict[str, Any]:
        """The hyperparameters given, and for the ones left out the run defaults (``run_defaults``)."""
        chosen = dict(self.hyperparameters)
        allowed = hyperparameter_names(self.variant)
        for name, default in run_defaults(self.variant, steps, self.latents, chosen.get("l1_coeff")).items():
            if name in allowed:
                chosen.setdefault(name, default)
        return chosen


@dataclass
class ParallelSpec:
    mode: str = option("data", "under torchrun: 'data' (each GPU a share of every batch) or 'latent' (a share of the "
                               "latents)")

    def __post_init__(self) -> None:
        check_choice("parallel", self.mode, PARALLEL_MODES)


def _checkpoint(out: Any) -> str | None:
    """Where a run keeps its checkpoint (None while ``out`` is not a folder name; RunSpec then refuses it)."""
    return str(Path(out) / "checkpoint.safetensors") if isinstance(out, str) and out else None


def _run_train_config() -> TrainConfig:
    """The trainer's settings of a run where they differ from TrainConfig's: larger batches, lr decay over the last
    fifth (``steps`` is replaced by tokens // batch_size)."""
    return TrainConfig(steps=1, batch_size=8192, lr_decay_start=0.8)


@dataclass
class RunSpec:
    data: DataSpec = field(default_factory=DataSpec, metadata={"help": "which activations"})
    sae: SAESpec = field(default_factory=SAESpec, metadata={"help": "which SAE"})
    train: TrainConfig = field(default_factory=_run_train_config, metadata={"help": "how it is trained"})
    parallel: ParallelSpec = field(default_factory=ParallelSpec, metadata={"help": "how it is spread over GPUs"})
    tokens: int | str = option("1M", "training tokens (8192, 25k, 204.8M); steps = tokens // batch size")
    out: str = option("runs/latest", "results folder (checkpoint.safetensors, config.json, metrics.json)")
    target_l0: float | None = option(None, "calibrate l1 to this held-out L0 (a few whole training runs, then the "
                                           "run itself)")
    calibration_trials: int = option(4, "most calibration runs for --target-l0")
    extra: dict[str, Any] = option(help="free-form notes recorded with the run", default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in (("data", DataSpec), ("sae", SAESpec), ("train", TrainConfig), ("parallel", ParallelSpec)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        _check_types(self)
        self.tokens = parse_count(self.tokens)
        check_positive_int("calibration_trials", self.calibration_trials)
        if not self.out:
            raise ValueError("out must name a folder, got ''")
        if self.tokens < self.train.batch_size:
            raise ValueError(f"tokens={self.tokens} is less than one batch (batch_size={self.train.batch_size})")
        derived = {"steps": self.steps, "checkpoint_path": _checkpoint(self.out)}
        if any(getattr(self.train, name) != value for name, value in derived.items()):
            self.train = replace(self.train, **derived)
        if self.target_l0 is not None:
            check_in_range("target_l0", self.target_l0, 0.0, float(self.sae.latents), low_open=True)
            if "l1_coeff" in self.sae.hyperparameters:
                raise ValueError("give either l1 or target_l0 (which calibrates l1), not both")
            if "l1_coeff" not in hyperparameter_names(self.sae.variant):
                raise ValueError(f"target_l0 calibrates l1, but the {self.sae.variant} SAE has no l1 (TopK sets L0 "
                                 "with k)")

    @property
    def steps(self) -> int:
        return self.tokens // self.train.batch_size

    def sae_hyperparameters(self) -> dict[str, Any]:
        """The SAE's hyperparameters for this run (given, else the run defaults)."""
        return self.sae.resolved(self.steps)

    def to_dict(self) -> dict[str, Any]:
        """As JSON: nested tables, the derived TrainConfig fields included (they are ignored when read back)."""
        return json.loads(json.dumps(asdict(self)))

    def updated(self, **settings: Any) -> "RunSpec":
        """A copy with ``settings`` changed: dotted (``**{"train.lr": 1e-3}``) or flat (``lr=1e-3``) keys."""
        return RunSpec.from_dict(_merge(self.to_dict(), _nest(settings)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunSpec":
        """A spec from nested tables, dotted keys or earlier versions' flat keys (errors name the setting)."""
        nested = _nest(values)
        sections = {"data": DataSpec, "train": TrainConfig, "parallel": ParallelSpec}
        unknown = sorted(set(nested) - {f.name for f in fields(cls)})
        for name, kind in sections.items():
            table = nested.get(name, {})
            if not isinstance(table, dict):
                raise ValueError(f"{name} must be a table of settings, got {table!r}")
            known = {f.name for f in fields(kind)}
            unknown += sorted(f"{name}.{key}" for key in table if key not in known)
        sae = nested.get("sae", {})
        if not isinstance(sae, dict):
            raise ValueError(f"sae must be a table of settings, got {sae!r}")
        extra_keys = set(sae) - {"variant", "latents", "hyperparameters"}
        hyper = {**sae.get("hyperparameters", {}), **{key: sae[key] for key in extra_keys}}
        if unknown:
            raise ValueError(f"unknown run setting(s) {unknown}; valid settings: {sorted(valid_keys())}")
        train = {k: v for k, v in nested.get("train", {}).items() if k not in DERIVED_TRAIN_FIELDS}
        if isinstance(train.get("adam_betas"), list):
            train["adam_betas"] = tuple(train["adam_betas"])
        sae_spec = SAESpec(**{k: sae[k] for k in ("variant", "latents") if k in sae}, hyperparameters=hyper)
        top = {k: v for k, v in nested.items() if k not in (*sections, "sae")}
        train_cfg = replace(_run_train_config(), **train, checkpoint_path=_checkpoint(top.get("out", "runs/latest")))
        return cls(data=DataSpec(**nested.get("data", {})), sae=sae_spec, train=train_cfg,
                   parallel=ParallelSpec(**nested.get("parallel", {})), **top)

    @classmethod
    def from_file(cls, path: str | Path) -> "RunSpec":
        """Read a run from JSON, or from TOML on Python >= 3.11: nested tables, dotted or flat keys, or a results
        folder's config.json (whose result records are dropped). Errors name the file."""
        values = read_settings(path)
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as err:
            raise ValueError(f"config {path}: {err}") from None


# --- earlier versions' flat keys ----------------------------------------------------------------------------------
FLAT_KEYS = {
    **{name: f"data.{name}" for name in ("model", "hook", "corpus", "ctx_len", "max_contexts", "eval_contexts",
                                          "normalize", "buffer_rows", "contexts_per_chunk", "rho")},
    "sae": "sae.variant", "latents": "sae.latents", "l1": "sae.l1_coeff", "l2": "sae.l2_coeff",
    **{name: f"sae.{name}" for name in ("k", "gamma", "ema_beta", "ref_pct", "warmup_start", "warmup_steps",
                                         "aux_coeff", "dead_after_tokens")},
    **{name: f"train.{name}" for name in ("batch_size", "lr", "lr_warmup_steps", "lr_decay_start", "grad_clip",
                                           "device", "precision", "fast", "seed", "checkpoint_every", "progress")},
    "parallel": "parallel.mode",
    **{name: name for name in ("tokens", "out", "target_l0", "calibration_trials", "extra")},
}
# Result records of config.json files written before RunSpec.
OLD_RESULT_RECORDS = ("data", "sae_config", "data_settings", "calibration")


def valid_keys() -> list[str]:
    """Every dotted setting a run takes (the variants' hyperparameters under sae.)."""
    keys = [f"data.{f.name}" for f in fields(DataSpec)] + ["sae.variant", "sae.latents"]
    keys += sorted({f"sae.{n}" for v in VARIANTS for n in hyperparameter_names(v) if n not in DERIVED_SAE_FIELDS})
    keys += [f"train.{f.name}" for f in fields(TrainConfig) if f.name not in DERIVED_TRAIN_FIELDS]
    keys += ["parallel.mode"] + [f.name for f in fields(RunSpec) if f.name not in ("data", "sae", "train", "parallel")]
    return keys


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    """Flat and dotted keys into nested tables; a flat ``sae``/``parallel`` string is the variant/the mode."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("data", "sae", "train", "parallel") and isinstance(value, dict):
            nested[key] = _merge(nested.get(key, {}), dict(value))
            continue
        if key == "data" and isinstance(value, str):  # a pre-RunSpec config.json's data label
            continue
        dotted = FLAT_KEYS.get(key, key)
        section, _, name = dotted.partition(".")
        if value is None and section == "sae" and name not in ("variant", "latents"):
            continue  # a hyperparameter left out (None in earlier versions' files): the run default
        if name:
            nested.setdefault(section, {})
            if not isinstance(nested[section], dict):
                raise ValueError(f"{section} must be a table of settings, got {nested[section]!r}")
            nested[section][name] = value
        else:
            nested[section] = value
    return nested


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            and key != "extra" else value
    return merged


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings table of a JSON or TOML file, result records dropped; errors name the file."""
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
        import tomllib

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
    return {k: v for k, v in values.items() if k not in RESULT_RECORDS + OLD_RESULT_RECORDS
            or (k == "data" and isinstance(v, dict))}


# --- types and run defaults ---------------------------------------------------------------------------------------
KINDS = {"bool": (bool,), "str": (str,), "int": (int,), "float": (int, float), "int | str": (int, str),
         "dict[str, Any]": (dict,)}
WANTED = {"bool": "true or false", "str": "a string", "int": "an integer", "float": "a number",
          "int | str": "a count (8192, '25k', '204.8M')", "dict[str, Any]": "a table"}


def _check_types(spec: Any) -> None:
    """Each setting against its annotation (a file's ``"normalize": "false"`` is refused, not read as true)."""
    for f in fields(spec):
        annotation, value = str(f.type), getattr(spec, f.name)
        optional = annotation.endswith(" | None")
        kind = annotation.removesuffix(" | None")
        if kind not in KINDS or (value is None and optional):
            continue
        if isinstance(value, bool) and bool not in KINDS[kind] or not isinstance(value, KINDS[kind]):
            raise ValueError(f"{f.name} must be {WANTED[kind]}{' (or left out)' if optional else ''}, got {value!r}")


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
    return {k: v for k, v in defaults.items() if v is not None}


DEFAULT_L1 = {"relu_l1": 1.0, "elastic_net": 1.0, "adaptive_lasso": 0.3, "aen": 0.3}
# What the command line says about the run defaults of run_defaults (beside each --sae.* flag).
RUN_DEFAULT_NOTES = {"l1_coeff": "1.0 for relu_l1 and elastic_net, 0.3 for adaptive_lasso and aen; or calibrated by "
                                 "--target-l0", "l2_coeff": "0.1 x l1", "k": "32, at most a quarter of the latents",
                     "ema_beta": "0.99", "warmup_start": "a quarter of the steps",
                     "warmup_steps": "a quarter of the steps"}


# --- the flat form ------------------------------------------------------------------------------------------------
def _flat_field(flat: str, dotted: str, defaults: RunSpec) -> tuple[str, Any, Any]:
    """(name, annotation, field) of one flat setting, its type and default from where it lives in the spec."""
    section, _, name = dotted.partition(".")
    if section == "sae" and name not in ("variant", "latents"):  # a hyperparameter: None leaves the run default
        owner = next(config_class(v) for v in VARIANTS if name in hyperparameter_names(v))
        annotation = next(str(f.type) for f in fields(owner) if f.name == name)
        return flat, f"{annotation} | None", field(default=None)
    owner = getattr(defaults, section) if name else defaults
    f = next(f for f in fields(owner) if f.name == (name or section))
    value = getattr(owner, f.name)
    default = field(default_factory=dict) if isinstance(value, dict) else field(default=value)
    return flat, str(f.type), default


def _flat_post_init(self: Any) -> None:
    self.validate()


def _flat_validate(self: Any) -> None:
    """Check every setting by building the RunSpec (errors name the setting)."""
    self.tokens = self.to_spec().tokens


def _flat_to_spec(self: Any) -> RunSpec:
    return RunSpec.from_dict(asdict(self))


RunConfig = make_dataclass("RunConfig", [_flat_field(k, v, RunSpec()) for k, v in FLAT_KEYS.items()], namespace={
    "__doc__": "A run in the flat settings of earlier versions (generated from FLAT_KEYS); ``to_spec()`` gives its "
               "RunSpec, which is what runs use.",
    "__post_init__": _flat_post_init, "validate": _flat_validate, "to_spec": _flat_to_spec,
    "steps": property(lambda self: self.to_spec().steps),
    "sae_hyperparameters": lambda self: self.to_spec().sae_hyperparameters(),
    "from_dict": classmethod(lambda cls, values: cls(**_flatten(RunSpec.from_dict(values)))),
    "from_file": classmethod(lambda cls, path: cls(**_flatten(RunSpec.from_file(path)))),
})
RunConfig.__module__ = __name__


def _flatten(spec: RunSpec) -> dict[str, Any]:
    """A spec in the flat keys (settings without a flat key are left out)."""
    nested = spec.to_dict()
    nested["sae"] = {"variant": spec.sae.variant, "latents": spec.sae.latents, **spec.sae.hyperparameters}
    out = {}
    for flat, dotted in FLAT_KEYS.items():
        section, _, name = dotted.partition(".")
        value = nested[section].get(name) if name else nested[section]
        out[flat] = value
    return out


__all__ = ["RunSpec", "DataSpec", "SAESpec", "ParallelSpec", "RunConfig", "FLAT_KEYS", "SPIKED", "run_defaults",
           "DEFAULT_L1", "read_settings", "valid_keys"]
