"""Compute and memory planning for an SAE run, before renting the GPUs, and the one FLOP model the benchmarks use.

FLOPs per training token: every matmul of the step is 2*d*m FLOP per token. A dense SAE runs 6 (encoder and
decoder, each forward, input gradient and weight gradient): 12 d m. A variant declares its own count
(``SAE.matmuls_per_token``): TopK's AuxK decodes the dead latents' codes a second time and differentiates that
decoder (9 matmuls, 18 d m). The fused step (aen_mini.train.fast) skips the encoder's input gradient (b_dec's
gradient is a matrix-vector product there): 2 d m fewer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from aen_mini.sae import variant_class
from aen_mini.validate import check_positive_int

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class RunPlan:
    d_in: int
    d_sae: int
    tokens: int
    batch_size: int
    steps: int
    weights_gb: float  # fp32 master weights (W_enc, W_dec, biases)
    optimizer_gb: float  # Adam's two moments
    gradients_gb: float
    activations_gb: float  # per step: x, pre-activations, codes, reconstruction (compute dtype), kept for backward
    total_gpu_gb: float
    flop_per_token: float
    total_pflop: float
    hours_at: dict[str, float]  # wall time if the SAE step ran at this sustained TFLOP/s
    cache_tb: float  # disk needed to cache every activation once in the compute dtype

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def flop_per_token(d_in: int, d_sae: int, variant: str = "aen", fused: bool = False) -> float:
    """Model FLOPs of one training token of a ``variant`` SAE (see the module doc); ``fused``: as the fused step
    executes them."""
    matmuls = variant_class(variant).matmuls_per_token - (1 if fused else 0)
    return 2.0 * matmuls * d_in * d_sae


def plan_run(d_in: int, d_sae: int, tokens: int, batch_size: int = 8192, compute_dtype: str = "bf16",
             tflops: tuple[float, ...] = (100.0, 400.0), variant: str = "aen") -> RunPlan:
    """Memory and time needed to train a (d_in, d_sae) ``variant`` SAE on ``tokens`` activations."""
    for name, value in (("d_in", d_in), ("d_sae", d_sae), ("tokens", tokens), ("batch_size", batch_size)):
        check_positive_int(name, value)
    if compute_dtype not in BYTES:
        raise ValueError(f"compute_dtype must be one of {sorted(BYTES)}, got {compute_dtype!r}")
    n_params = 2 * d_in * d_sae + d_in + d_sae
    gb = 1e9
    weights = 4 * n_params / gb
    act_bytes = BYTES[compute_dtype] * batch_size * (2 * d_in + 3 * d_sae)
    per_token = flop_per_token(d_in, d_sae, variant)
    total_flop = per_token * tokens
    return RunPlan(
        d_in=d_in, d_sae=d_sae, tokens=tokens, batch_size=batch_size, steps=-(-tokens // batch_size),
        weights_gb=weights, optimizer_gb=2 * weights, gradients_gb=weights, activations_gb=act_bytes / gb,
        total_gpu_gb=4 * weights + act_bytes / gb,
        flop_per_token=per_token, total_pflop=total_flop / 1e15,
        hours_at={f"{t:g} TFLOP/s": total_flop / (t * 1e12) / 3600 for t in tflops},
        cache_tb=BYTES[compute_dtype] * tokens * d_in / 1e12,
    )


def parse_count(text: str | int) -> int:
    """'204.8M' -> 204_800_000; '25k' -> 25_000; plain integers pass through."""
    if isinstance(text, int):
        return text
    s = str(text).strip().replace("_", "")
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}.get(s[-1:].lower(), 1)
    number = s[:-1] if scale != 1 else s
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a count (examples: 8192, 25k, 204.8M, 1.2B)") from None
    if value <= 0 or value != int(value):
        raise ValueError(f"{text!r} is not a positive whole number")
    return int(value)
