"""The fast training step: one optimiser step of any SAE variant with bf16 matmuls on fp32 master weights,
compiled elementwise work, fused Adam, and (on CUDA) the whole step captured as one CUDA graph.

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

from dataclasses import dataclass
from typing import Callable

import torch

from aen_mini.sae.base import SAE
from aen_mini.validate import check_nonnegative, check_nonnegative_int

WARMUP_STEPS = 3  # eager steps before capture: compilation, Adam's lazy state, cuBLAS workspaces
# inductor modes that leave CUDA graphs to us (FastStep captures the whole step, optimiser included)
COMPILE_MODES = (None, "default", "max-autotune-no-cudagraphs")


@dataclass
class StepOutput:
    """What one training step returns: its loss terms (float32 scalars, ``"loss"`` their sum) and the batch's codes
    (detached; what ``after_step`` counted and what the trainer logs L0 from)."""

    terms: dict[str, torch.Tensor]
    codes: torch.Tensor


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
        return sum(sae.penalties(codes, pre_c, x_c, x_c).values(), codes.new_zeros(()))

    penalty_grad = torch.func.grad(penalty_sum)(h.to(wide))
    codes, zero_with_penalty_grad = _CodesWithPenaltyGrad.apply(pre, h, penalty_grad)
    # decode_atoms directly: SAE.decode would first cast h to the weights' float32, a (batch, d_sae) round trip
    x_hat = sae.decode_atoms(codes) + b_dec
    terms = {"mse": sae.reconstruction_error(x, x_hat.to(wide))}
    # wide codes for the penalties: under torch.compile the cast is fused away, and the sums stay exact.
    terms.update(sae.penalties(h.to(wide), pre, x, x_hat.to(wide)))
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


class FastStep:
    """``step(x, lr) -> StepOutput``: one full training step of ``sae`` on batch ``x`` at learning rate ``lr``.

    ``compile`` and ``cuda_graph`` default to on for CUDA and off elsewhere. The returned terms are float32
    scalars owned by the caller; the codes are valid until the next call (under a CUDA graph, a static buffer).
    """

    def __init__(self, sae: SAE, optimizer: torch.optim.Optimizer, grad_clip: float = 1.0, *,
                 dtype: torch.dtype = torch.bfloat16, compile: bool | None = None, cuda_graph: bool | None = None,
                 compile_mode: str | None = None, warmup_steps: int = WARMUP_STEPS) -> None:
        if dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float32, got {dtype}")
        self.sae, self.optimizer, self.dtype = sae, optimizer, dtype
        self.grad_clip = check_nonnegative("grad_clip", grad_clip)
        self.warmup_steps = check_nonnegative_int("warmup_steps", warmup_steps)
        self.device = sae.W_dec.device
        on_cuda = self.device.type == "cuda"
        self.compile = on_cuda if compile is None else bool(compile)
        self.cuda_graph = on_cuda if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and not on_cuda:
            raise ValueError("cuda_graph=True needs the SAE on a CUDA device")
        self.graph_disabled_reason: str | None = None
        prepare_fused_adam(optimizer)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.compile_mode = compile_mode
        loss: Callable = fast_loss
        after_step: Callable = sae.after_step
        if self.compile:
            loss = torch.compile(loss, dynamic=False, mode=compile_mode)
            after_step = torch.compile(after_step, dynamic=False, mode=compile_mode)
        self._loss, self._after_step = loss, after_step
        self._calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None

    # --- the step body, shared by the eager and the captured path --------------------------------------
    def _body(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            terms, h = self._loss(self.sae, x, self.dtype)
        terms["loss"].backward()
        if self.grad_clip:
            # clip_grad_norm_ would rescale every gradient in place; fused Adam divides by grad_scale on the fly.
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params])
            self.optimizer.grad_scale = ((norm + 1e-6) / self.grad_clip).clamp_min(1.0)
        # A non-finite loss skips the parameter update (fused Adam's found_inf), so the weights stay finite
        # until the trainer's next check raises.
        self.optimizer.found_inf = (~torch.isfinite(terms["loss"].detach())).float()
        try:
            self.optimizer.step()
        finally:
            self.optimizer.__dict__.pop("grad_scale", None)
            self.optimizer.__dict__.pop("found_inf", None)
        h = h.detach()
        # after_step would fold the non-finite codes into the running state (the adaptive EMA, firing counters, step):
        # keep the buffers as they were when the update is skipped, on the device (no host sync, graph-capturable).
        buffers = list(self.sae.buffers())
        before = [b.clone() for b in buffers]
        self._after_step(h)
        skipped = ~torch.isfinite(terms["loss"].detach())
        for buffer, old in zip(buffers, before):
            buffer.copy_(torch.where(skipped, old, buffer))
        return terms, h

    def _eager(self, x: torch.Tensor, lr: float):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        terms, h = self._body(x)
        return StepOutput({name: t.detach().float() for name, t in terms.items()}, h)

    # --- the public call --------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, lr: float) -> StepOutput:
        self._calls += 1
        if not self.cuda_graph or self.graph_disabled_reason is not None:
            return self._eager(x, lr)
        if self._graph is None:
            if self._calls <= self.warmup_steps:
                return self._warmup(x, lr)
            self._capture(x, lr)
            if self._graph is None:  # capture failed; graph_disabled_reason says why
                return self._eager(x, lr)
        self._static_x.copy_(x, non_blocking=True)
        self._lr.fill_(lr)
        self._graph.replay()
        return StepOutput(dict(zip(self._names, self._static_terms.clone().unbind())), self._static_codes)

    # --- CUDA graph ---------------------------------------------------------------------------------------
    def _warmup(self, x: torch.Tensor, lr: float) -> StepOutput:
        """An eager step on a side stream, as capture requires (compilation, Adam's lazy state, cuBLAS workspaces)."""
        side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            terms = self._eager(x, lr)
        main.wait_stream(side)
        return terms

    def _capture(self, x: torch.Tensor, lr: float) -> None:
        self._static_x = x.detach().clone()
        # Adam reads the learning rate from this tensor, so a schedule only refills it between replays. The
        # param groups get their float back after capture (checkpoints store them as JSON).
        self._lr = torch.tensor(float(lr), dtype=torch.float32, device=self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a producer thread (PrefetchSource) may keep using CUDA while we capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                terms, self._static_codes = self._body(self._static_x)
                self._names = list(terms)
                self._static_terms = torch.stack([t.detach().float() for t in terms.values()])
            self._graph = graph
        except RuntimeError as err:  # nothing recorded during a failed capture has run
            self.graph_disabled_reason = f"CUDA graph capture failed ({str(err)[:160]})"
            self.optimizer.zero_grad(set_to_none=True)
        finally:
            for group in self.optimizer.param_groups:
                group["lr"] = float(lr)

    def describe(self) -> str:
        """One line saying which optimisations are active."""
        graph = "off" if not self.cuda_graph else (f"off ({self.graph_disabled_reason})" if self.graph_disabled_reason
                                                    else "on")
        compiled = ("on" + (f" ({self.compile_mode})" if self.compile_mode not in (None, "default") else "")
                    if self.compile else "off")
        return f"dtype={str(self.dtype).removeprefix('torch.')}, compile={compiled}, cuda_graph={graph}, fused Adam"


__all__ = ["COMPILE_MODES", "FastStep", "StepOutput", "fast_loss", "prepare_fused_adam"]
