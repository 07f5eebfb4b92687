"""One training step, ``step(x, lr) -> StepOutput``: forward, backward, clipping, Adam and ``after_step``, in one
body with its switches around it.

* ``loss_fn(x) -> (terms, codes)``: the plain loss (``SAE.loss_and_codes``, or what a parallel strategy made of it:
  a DistributedDataParallel module, a latent shard's loss) or the fused one (``aen_mini.train.fast.fast_loss``);
* ``dtype``: bf16 autocast around the loss, or fp32;
* ``fused``: fused Adam, with clipping folded into it (``grad_scale``) and a non-finite loss skipped on the device
  (``found_inf``, running state restored), so nothing waits for the host; otherwise plain Adam, the strategy's
  ``clip_grad_norm_``, and a non-finite loss seen on the host before any update;
* ``compile``: ``torch.compile`` of the loss and ``after_step`` (the same meaning in every path);
* ``cuda_graph`` (fused, one process, CUDA): after a few eager steps the whole step is captured once and replayed.

The loop (``aen_mini.train.loop``) calls the step and never asks which kind it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from aen_mini.sae.base import SAE
from aen_mini.sae.collective import LOCAL_STATS, StatReducer
from aen_mini.validate import check_nonnegative, check_nonnegative_int

LossFn = Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]
WARMUP_STEPS = 3  # eager steps before capture: compilation, Adam's lazy state, cuBLAS workspaces
# inductor modes that leave CUDA graphs to us (the step captures itself, optimiser included)
COMPILE_MODES = (None, "default", "max-autotune-no-cudagraphs")


@dataclass
class StepOutput:
    """What one training step returns: its loss terms (float32 scalars, ``"loss"`` their sum) and the batch's codes
    (detached; what ``after_step`` counted and what the trainer logs L0 from; under a CUDA graph a static buffer,
    valid until the next step)."""

    terms: dict[str, torch.Tensor]
    codes: torch.Tensor


def _clip_by_norm(sae: SAE, max_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(sae.parameters(), max_norm)


class Step:
    """``step(x, lr) -> StepOutput``: one full training step of ``sae`` on batch ``x`` at learning rate ``lr``.

    ``stats`` and ``clip_grad_norm_`` come from the parallel strategy (the identity and torch's clipping in one
    process)."""

    def __init__(self, sae: SAE, optimizer: torch.optim.Optimizer, loss_fn: LossFn | None = None, *,
                 grad_clip: float | None = 1.0, dtype: torch.dtype = torch.float32, fused: bool = False,
                 compile: bool = False, cuda_graph: bool = False, compile_mode: str | None = None,
                 stats: StatReducer = LOCAL_STATS, clip_grad_norm_: Callable[[SAE, float], None] = _clip_by_norm,
                 warmup_steps: int = WARMUP_STEPS) -> None:
        if dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float32, got {dtype}")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.sae, self.optimizer, self.dtype, self.fused = sae, optimizer, dtype, fused
        self.grad_clip = check_nonnegative("grad_clip", grad_clip or 0.0)
        self.warmup_steps = check_nonnegative_int("warmup_steps", warmup_steps)
        self.device = sae.W_dec.device
        self.compile, self.cuda_graph, self.compile_mode = bool(compile), bool(cuda_graph), compile_mode
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs the SAE on a CUDA device")
        if self.cuda_graph and not fused:
            raise ValueError("cuda_graph=True needs the fused step: the plain step checks the loss on the host")
        self.stats, self.clip_grad_norm_ = stats, clip_grad_norm_
        self.graph_disabled_reason: str | None = None
        if fused:
            from aen_mini.train.fast import prepare_fused_adam  # the fused kernel's settings live with the fused loss

            prepare_fused_adam(optimizer)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        loss_fn = loss_fn or sae.loss_and_codes
        after_step: Callable = sae.after_step
        if self.compile:
            loss_fn = torch.compile(loss_fn, dynamic=False, mode=compile_mode)
            after_step = torch.compile(after_step, dynamic=False, mode=compile_mode)
        self._loss, self._after_step = loss_fn, after_step
        self._calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None

    @property
    def checks_on_device(self) -> bool:
        """Whether a non-finite loss is kept from the weights on the device (fused, not CPU), so the caller may look
        at the losses once in a while instead of after every step."""
        return self.fused and self.device.type != "cpu"

    # --- the body, shared by every path -------------------------------------------------------------------------
    def _body(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            terms, h = self._loss(x)
        h = h.detach()
        nonfinite = ~torch.isfinite(terms["loss"].detach())
        if not self.fused and bool(nonfinite):  # one host sync: a NaN loss never reaches the weights
            return terms, h
        terms["loss"].backward()
        if self.fused:
            if self.grad_clip:
                # clip_grad_norm_ would rescale every gradient in place; fused Adam divides by grad_scale on the fly.
                norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
                self.optimizer.grad_scale = ((norm + 1e-6) / self.grad_clip).clamp_min(1.0)
            # A non-finite loss skips the parameter update (fused Adam's found_inf), so the weights stay finite
            # until the trainer's next check raises.
            self.optimizer.found_inf = nonfinite.float()
            try:
                self.optimizer.step()
            finally:
                self.optimizer.__dict__.pop("grad_scale", None)
                self.optimizer.__dict__.pop("found_inf", None)
            # after_step would fold non-finite codes into the running state (the adaptive EMA, firing counters):
            # keep the buffers as they were when the update is skipped, on the device (graph-capturable).
            buffers = list(self.sae.buffers())
            before = [b.clone() for b in buffers]
            self._after_step(h, self.stats)
            for buffer, old in zip(buffers, before):
                buffer.copy_(torch.where(nonfinite, old, buffer))
        else:
            if self.grad_clip:
                self.clip_grad_norm_(self.sae, self.grad_clip)
            self.optimizer.step()
            self._after_step(h, self.stats)
        return terms, h

    def _eager(self, x: torch.Tensor, lr: float) -> StepOutput:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        terms, h = self._body(x)
        return StepOutput({name: t.detach().float() for name, t in terms.items()}, h)

    # --- the public call ----------------------------------------------------------------------------------------
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

    # --- CUDA graph ---------------------------------------------------------------------------------------------
    def _warmup(self, x: torch.Tensor, lr: float) -> StepOutput:
        """An eager step on a side stream, as capture requires (compilation, Adam's lazy state, cuBLAS workspaces)."""
        side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self._eager(x, lr)
        main.wait_stream(side)
        return out

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
        adam = "fused Adam" if self.fused else "Adam"
        return f"dtype={str(self.dtype).removeprefix('torch.')}, compile={compiled}, cuda_graph={graph}, {adam}"


def make_step(sae: SAE, optimizer: torch.optim.Optimizer, loss_fn: LossFn, cfg: Any, parallel: Any) -> Step:
    """The step a TrainConfig asks for, around the loss the parallel strategy prepared: fused when ``cfg.fast``,
    a CUDA graph when fused in one process on CUDA, compiled when ``cfg.compiles``."""
    one_process_cuda = parallel.world_size == 1 and sae.W_dec.device.type == "cuda"
    return Step(sae, optimizer, loss_fn, grad_clip=cfg.grad_clip, dtype=cfg.dtype, fused=cfg.fast,
                compile=cfg.compiles, cuda_graph=cfg.fast and one_process_cuda, stats=parallel.stats,
                clip_grad_norm_=parallel.clip_grad_norm_)


__all__ = ["Step", "StepOutput", "make_step", "COMPILE_MODES", "WARMUP_STEPS"]
