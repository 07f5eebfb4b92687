"""Export to and import from the SAELens on-disk format (sae-lens 6.x): a folder holding ``cfg.json`` and
``sae_weights.safetensors``, which ``sae_lens.SAE.load_from_disk(folder)`` loads.

Every aen_mini variant is exported as the SAELens *inference* architecture that computes the same map:

=====================================================  ==============  =============================================
aen_mini variant                                        SAELens         why
=====================================================  ==============  =============================================
``relu_l1``, ``elastic_net``, ``adaptive_lasso``,       ``standard``    the penalties (L2, adaptive weights) only shape
``aen``                                                                 training; the trained SAE is a plain ReLU SAE
``topk``                                                ``topk``        ``k`` is recorded
``batch_topk``                                          ``jumprelu``    at inference BatchTopK keeps pre-activations above
                                                                        its running threshold: a JumpReLU whose threshold
                                                                        is that value for every latent (SAELens exports its
                                                                        own BatchTopK the same way)
=====================================================  ==============  =============================================

SAELens stores ``W_enc (d_in, d_sae)`` and ``W_dec (d_sae, d_in)``, the transposes of ours; with
``apply_b_dec_to_input=True`` its encoder subtracts ``b_dec`` first, as ours does. The adaptive EMA, the firing
counters and the warm-up position are training state and are not exported (use :mod:`aen_mini.io.checkpoint` to
resume training).

Normalisation: an aen_mini SAE sees activations after the data pipeline's rescaling. ``normalize_activations``
records that rescaling so that SAELens applies it itself to raw activations: ``"constant_norm_rescale"`` (every
token scaled to norm sqrt(d_in), the Pythia setup), ``"expected_average_only_in"`` (one dataset-wide factor,
applied outside the SAE at run time, as in SAELens) or ``"none"``.

The aen_mini config (variant and hyperparameters) is kept under ``metadata["aen_mini"]`` in ``cfg.json``, so
importing our own export restores the variant. A SAELens SAE from elsewhere imports as ``relu_l1`` (standard),
``topk`` or ``batch_topk`` (a JumpReLU with one threshold shared by all latents); other architectures,
per-latent thresholds, layer-norm or whitening normalisation are refused with a message saying which.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from aen_mini.io.atomic import atomic_save_safetensors, atomic_write_text
from aen_mini.io.checkpoint import load_sae_state, read_safetensors
from aen_mini.sae import SAE, VARIANTS, make_sae, sae_from_config, variant_class
from aen_mini.validate import check_choice, check_positive_int

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
# The cfg.json layout (top-level fields plus a metadata dict) that SAELens introduced in 6.0.
SAELENS_FORMAT_VERSION = "6.0.0"
NORMALIZATIONS = ("none", "constant_norm_rescale", "expected_average_only_in")
# Each variant says which SAELens architecture computes its map (SAE.saelens_architecture) and what that needs beyond
# the four standard tensors (SAE.saelens_export). This table is the built-in variants' view of it.
ARCHITECTURE_OF_VARIANT = {name: cls.saelens_architecture for name, cls in VARIANTS.items()}
# What a SAELens SAE without aen_mini metadata becomes.
VARIANT_OF_ARCHITECTURE = {"standard": "relu_l1", "topk": "topk", "jumprelu": "batch_topk"}
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def export_to_saelens(sae: SAE, folder: str | os.PathLike, *, model_name: str | None = None,
                      hook_name: str | None = None, normalize_activations: str = "none",
                      context_size: int | None = None, prepend_bos: bool = True) -> Path:
    """Write ``sae`` as a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``); return the folder.

    ``model_name`` and ``hook_name`` (e.g. ``"EleutherAI/pythia-70m-deduped"``, ``"blocks.3.hook_resid_post"``)
    say where the activations came from; ``normalize_activations`` how they were rescaled (see module doc).
    """
    if not isinstance(sae, SAE):
        raise TypeError(f"sae must be an aen_mini SAE, got {type(sae).__name__}")
    check_choice("normalize_activations", normalize_activations, NORMALIZATIONS)
    for name, value in (("model_name", model_name), ("hook_name", hook_name)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
    if context_size is not None:
        check_positive_int("context_size", context_size)
    if sae.W_enc.dtype not in DTYPE_NAMES:
        raise ValueError(f"SAELens stores float32/float64/float16/bfloat16 weights, not {sae.W_enc.dtype}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot export to {folder}: it exists and is not a folder")

    weights = {"W_enc": sae.W_enc.T, "W_dec": sae.W_dec.T, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    architecture = type(sae).saelens_architecture
    extra, extra_weights = sae.saelens_export()
    weights.update(extra_weights)
    for name, value in weights.items():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"refusing to export {name}: it holds NaN or inf")
    cfg = {
        "architecture": architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": DTYPE_NAMES[sae.W_enc.dtype],
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": normalize_activations,
        "reshape_activations": "none", **extra,
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
                     "model_name": model_name, "hook_name": hook_name, "hook_head_index": None,
                     "context_size": context_size, "prepend_bos": prepend_bos, "aen_mini": sae.config()},
    }
    atomic_save_safetensors({k: v.detach() for k, v in weights.items()}, folder / WEIGHTS_FILENAME)
    atomic_write_text(folder / CFG_FILENAME, json.dumps(cfg, indent=2))
    return folder


def read_saelens_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``cfg.json`` of a SAELens folder (hook name, model name, normalisation ...)."""
    path = Path(folder) / CFG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a SAELens folder: {CFG_FILENAME} is missing")
    try:
        cfg = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def import_from_saelens(folder: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Load a SAELens folder as an aen_mini SAE in ``eval()`` mode (inference: BatchTopK uses its threshold).

    The result encodes and decodes as SAELens does on activations that were already normalised the way
    ``read_saelens_config(folder)["normalize_activations"]`` says.
    """
    folder = Path(folder)
    cfg = read_saelens_config(folder)
    cfg_path = folder / CFG_FILENAME
    for key in ("d_in", "d_sae"):
        if key not in cfg:
            raise ValueError(f"{cfg_path} lacks the field {key!r}")
    architecture = cfg.get("architecture", "standard")  # SAELens' own default for configs without one
    if architecture not in VARIANT_OF_ARCHITECTURE:
        raise ValueError(f"{cfg_path}: architecture {architecture!r} has no aen_mini counterpart; "
                         f"supported: {sorted(VARIANT_OF_ARCHITECTURE)}")
    normalization = cfg.get("normalize_activations", "none")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"{cfg_path}: normalize_activations={normalization!r} is not supported; "
                         f"supported: {list(NORMALIZATIONS)}")
    if cfg.get("finetuning_scaling_factor") or cfg.get("rescale_acts_by_decoder_norm"):
        raise ValueError(f"{cfg_path}: finetuning_scaling_factor / rescale_acts_by_decoder_norm are not supported")

    dtype_name = str(cfg.get("dtype", "float32")).removeprefix("torch.")
    dtypes = {name: dtype for dtype, name in DTYPE_NAMES.items()}
    if dtype_name not in dtypes:
        raise ValueError(f"{cfg_path}: dtype {cfg.get('dtype')!r} is not one of {list(dtypes)}")
    sae = _build(cfg, cfg_path, architecture)
    weights = _read_weights(folder / WEIGHTS_FILENAME, architecture, sae.d_in, sae.d_sae)
    weights = {k: v.to(dtypes[dtype_name]) for k, v in weights.items()}  # cfg.json's dtype wins, as in SAELens
    W_enc, W_dec, b_enc, b_dec = (weights[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec"))
    if not cfg.get("apply_b_dec_to_input", True):
        # SAELens encodes x @ W_enc + b_enc; ours subtracts b_dec first, so fold b_dec @ W_enc into b_enc.
        b_enc = b_enc + b_dec @ W_enc
    state = {**sae.state_dict(), "W_enc": W_enc.T, "W_dec": W_dec.T, "b_enc": b_enc, "b_dec": b_dec}
    if architecture == "jumprelu":
        threshold = weights["threshold"]
        if not bool((threshold == threshold[0]).all()) or float(threshold[0]) < 0:
            raise ValueError(f"{folder / WEIGHTS_FILENAME}: a JumpReLU SAE with per-latent (or negative) thresholds "
                             "has no aen_mini counterpart; only one shared threshold >= 0 (BatchTopK) imports")
        state["threshold"] = threshold[0].clone()
    sae.to(dtypes[dtype_name])
    load_sae_state(sae, {k: v.to(sae.W_enc.dtype) if v.is_floating_point() else v for k, v in state.items()},
                   source=str(folder / WEIGHTS_FILENAME))
    return sae.to(device).eval()


def _build(cfg: dict[str, Any], cfg_path: Path, architecture: str) -> SAE:
    """The aen_mini variant recorded in the metadata, or the default one for the architecture."""
    metadata = cfg.get("metadata") or {}
    ours = metadata.get("aen_mini") if isinstance(metadata, dict) else None
    if ours is not None:
        known = isinstance(ours, dict) and str(ours.get("variant")) in VARIANTS
        if not known or variant_class(str(ours["variant"])).saelens_architecture != architecture:
            raise ValueError(f"{cfg_path}: metadata.aen_mini does not describe a {architecture} SAE: {ours!r}")
        if (ours.get("d_in"), ours.get("d_sae")) != (cfg["d_in"], cfg["d_sae"]):
            raise ValueError(f"{cfg_path}: metadata.aen_mini sizes disagree with d_in/d_sae")
        return sae_from_config(ours)
    variant = VARIANT_OF_ARCHITECTURE[architecture]
    if variant == "topk":
        return make_sae("topk", cfg["d_in"], cfg["d_sae"], k=cfg.get("k", 100))
    if variant == "batch_topk":
        # SAELens does not store k for a JumpReLU; it only matters if the SAE is trained further.
        return make_sae("batch_topk", cfg["d_in"], cfg["d_sae"], k=min(32, cfg["d_sae"]))
    return make_sae(variant, cfg["d_in"], cfg["d_sae"])


def _read_weights(path: Path, architecture: str, d_in: int, d_sae: int) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"SAELens weights {path} do not exist")
    weights, _ = read_safetensors(path)
    needed = {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"threshold"} if architecture == "jumprelu" else set())
    if set(weights) != needed:
        raise ValueError(f"{path} holds tensors {sorted(weights)}; a {architecture} SAE needs {sorted(needed)}")
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    wrong = [f"{k}: {tuple(v.shape)}, expected {shapes[k]}" for k, v in weights.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        raise ValueError(f"{path} does not fit d_in={d_in}, d_sae={d_sae}: {wrong}")
    not_float = sorted(k for k, v in weights.items() if not v.is_floating_point())
    if not_float:
        raise ValueError(f"{path}: tensors {not_float} are not floating point")
    return weights


__all__ = ["export_to_saelens", "import_from_saelens", "read_saelens_config", "ARCHITECTURE_OF_VARIANT"]
