"""The fused loss and the fast step (``Step(fused=True)``, aen_mini.train.step): one optimiser step of any SAE variant
with bf16 matmuls on fp32 master weights, compiled elementwise work, fused Adam, and (on CUDA, one process) the whole
step captured as one CUDA graph.

What it changes against ``SAE.loss`` + ``loss.backward()`` + ``clip_grad_norm_`` + ``Adam.step`` + ``after_step``:

* matmuls run in bfloat16 under autocast (the weights, the gradients and Adam's moments stay float32);
  the codes ``h`` are bfloat16, the reconstruction error and every penalty are reduced in float32;
* b_dec's gradient through the encoder input ``x - b_dec`` is computed as a matrix-vector product instead of
  the full (batch, d_in) input gradient: 10 d m instead of 12 d m FLOP per token (see ``fast_loss``);
* ``torch.compile`` fuses the elementwise work (ReLU, penalties and their gradients) around the matmuls, and
  compiles ``after_step`` too: its firing counter and running statistics (the adaptive EMA of mean |h_j|) become
  one column reduction over the codes instead of several eager passes (at d=512, m=4096 the eager version cost
  about a tenth of the step); ``compile_mode`` picks inductor's mode (``"max-autotune-no-cudagraphs"`` also
  tries Triton matmuls with the elementwise work fused into their epilogues; the CUDA graph is ours);
* gradient clipping is folded into fused Adam through its ``grad_scale`` input (no separate pass over the
  gradients), and Adam is ``capturable`` so its step count and learning rate live on the device;
* on CUDA the whole step (forward, backward, clipping, Adam, decoder renormalisation, firing counters, the
  adaptive EMA) is one CUDA graph replay: no host syncs, no per-step Python dispatch.

Variants plug in through their own ``activation``, ``penalties`` and ``after_step``; nothing here branches on the
variant. A variant whose step synchronises with the host (BatchTopK's threshold update) cannot be captured:
capture fails before anything runs, and the step goes on without the graph (``graph_disabled_reason``).
"""
from __future__ import annotations

import torch

from aen_mini.sae.base import SAE
from aen_mini.train.step import COMPILE_MODES, WARMUP_STEPS, LossFn, Step, StepOutput


class _CodesWithPenaltyGrad(torch.autograd.Function):
    """Returns the codes ``h`` and a zero scalar to add to the loss; the backward turns dL/dh into dL/dpre in
    one elementwise pass: dL/dpre = [h > 0] (dL/dh + dL/dzero * penalty_grad).

    Every variant's activation is ReLU of a selection of the pre-activations (all of them, the top k per row, the
    top k * batch), so dh/dpre is the mask h > 0. ``penalty_grad`` is d(penalties)/dh; it reaches the loss
    through the zero scalar, so a loss scaled by c (or without that scalar) scales (or drops) it correctly.
    """

    @staticmethod
    def forward(ctx, pre: torch.Tensor, h: torch.Tensor, penalty_grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(h, penalty_grad)
        return h, penalty_grad.new_zeros(())

    @staticmethod
    def backward(ctx, dh: torch.Tensor, dzero: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        h, penalty_grad = ctx.saved_tensors
        return torch.where(h > 0, dh.to(penalty_grad.dtype) + dzero * penalty_grad, 0.0).to(dh.dtype), None, None


def fast_loss(sae: SAE, x: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The terms of ``sae.loss(x)`` computed for speed, and the codes ``h`` (in ``dtype``).

    Call it under ``torch.autocast(..., dtype)`` for bf16 matmuls. The values equal ``sae.loss`` up to rounding.
    """
    wide = torch.promote_types(dtype, torch.float32)  # every reduction: float32 (float64 in float64 tests)
    b_dec, W_enc = sae.b_dec, sae.W_enc.to(dtype)  # one cast of the encoder, shared by both products below
    # d pre / d b_dec = -W_enc^T sum_b d pre_b: a matrix-vector product. Written as (x - b_dec) @ W_enc^T,
    # autograd would form the whole (batch, d_in) input gradient (a 2 B d m matmul, a sixth of the step) and
    # then sum it. Here the matmul sees the constant x - b_dec, and b_dec's gradient flows through a term whose
    # value is exactly zero; W_enc is detached there because its gradient is already exact from the first term.
    zero = (b_dec.detach() - b_dec).to(dtype) @ W_enc.detach().T
    # The bias is added in ``dtype``: added in float32, the backward would write dL/dpre twice, once in float32
    # for b_enc's column sum (a (batch, d_sae) float32 tensor) and once in bf16 for the matmuls.
    pre = (x - b_dec.detach()).to(dtype) @ W_enc.T + (sae.b_enc + zero).to(dtype)
    h = sae.activation(pre.detach())
    # The penalties' gradient splits in two: through the codes (d penalties / dh, from the variant's own
    # `penalties` by torch.func.grad, so no derivative is written twice) and through everything else (AuxK's
    # pre-activations and residual), which ordinary autograd carries below with h held constant. The first part
    # joins the decoder's dL/dh inside the one elementwise pass of _CodesWithPenaltyGrad.backward.
    pre_c, x_c = pre.detach(), x.detach()

    def penalty_sum(codes: torch.Tensor) -> torch.Tensor:
        return sum(sae.scaled_penalties(codes, pre_c, x_c, x_c).values(), codes.new_zeros(()))

    penalty_grad = torch.func.grad(penalty_sum)(h.to(wide))
    codes, zero_with_penalty_grad = _CodesWithPenaltyGrad.apply(pre, h, penalty_grad)
    # decode_atoms directly: SAE.decode would first cast h to the weights' float32, a (batch, d_sae) round trip
    x_hat = sae.decode_atoms(codes) + b_dec
    terms = {"mse": sae.reconstruction_error(x, x_hat.to(wide))}
    # wide codes for the penalties: under torch.compile the cast is fused away, and the sums stay exact.
    terms.update(sae.scaled_penalties(h.to(wide), pre, x, x_hat.to(wide)))
    terms["loss"] = torch.stack([t.to(wide) for t in terms.values()]).sum() + zero_with_penalty_grad
    return terms, h


def prepare_fused_adam(optimizer: torch.optim.Optimizer) -> None:
    """Switch an Adam optimiser (fresh or just loaded from a checkpoint) to the fused kernel, capturable on CUDA.

    A checkpoint's param groups overwrite these flags on ``load_state_dict``, so this runs after loading.
    """
    if not isinstance(optimizer, torch.optim.Adam):
        raise TypeError(f"the fast step needs torch.optim.Adam, got {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        on_cuda = all(p.device.type == "cuda" for p in group["params"])
        group.update(fused=True, foreach=None, capturable=on_cuda)
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:  # fused Adam keeps the step count as float32 beside the parameter
                state["step"] = torch.as_tensor(float(state["step"]), dtype=torch.float32, device=p.device)
            for key, value in state.items():
                # The fused kernel walks parameter, gradient and moments as flat memory, so the moments must
                # share the parameter's strides. A loaded moment is contiguous, while W_enc (initialised as
                # W_dec's transpose) is column-major: without this the update would pair the wrong elements.
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def fused_loss(sae: SAE, dtype: torch.dtype = torch.bfloat16) -> LossFn:
    """``loss_fn(x) -> (terms, codes)`` by ``fast_loss``: what the fused step differentiates."""
    def loss(x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return fast_loss(sae, x, dtype)
    return loss


class FastStep(Step):
    """The fused step on its own (benchmarks, tests): ``Step(fused=True)`` around ``fast_loss``, with ``compile``
    and ``cuda_graph`` on for CUDA and off elsewhere unless given. ``step(x, lr) -> StepOutput``."""

    def __init__(self, sae: SAE, optimizer: torch.optim.Optimizer, grad_clip: float = 1.0, *,
                 dtype: torch.dtype = torch.bfloat16, compile: bool | None = None, cuda_graph: bool | None = None,
                 compile_mode: str | None = None, warmup_steps: int = WARMUP_STEPS) -> None:
        on_cuda = sae.W_dec.device.type == "cuda"
        super().__init__(sae, optimizer, fused_loss(sae, dtype), grad_clip=grad_clip, dtype=dtype, fused=True,
                         compile=on_cuda if compile is None else compile,
                         cuda_graph=on_cuda if cuda_graph is None else cuda_graph, compile_mode=compile_mode,
                         warmup_steps=warmup_steps)


__all__ = ["COMPILE_MODES", "FastStep", "StepOutput", "fast_loss", "fused_loss", "prepare_fused_adam"]
