"""Many small SAEs trained at once as one batched model: a whole grid (methods x coefficients x seeds) is one job.

Each SAE is built as usual (``make_sae``: its hyperparameters, its seed's initial weights, optionally the authors'
init); the grid stacks their parameters along a leading model axis, runs every matmul as one batched product,
keeps one Adam over the stacked tensors (Adam is elementwise, so this is each model's own Adam), clips each
model's gradient by its own norm, and applies each model's after-step (decoder renormalisation, firing counters,
the adaptive EMA). The ReLU family's gradient is written out (``aen_mini.train.grid_grads``), Adam is the fused
kernel, and the learning rate is read from a schedule on the device, so on CUDA ``steps_per_graph`` whole steps,
data included, are captured as one CUDA graph and a 50k-step run never waits for Python or the host (at the
paper's size a step is bound by kernel launches: benchmarks/replication_speed.md). ``unstack`` writes the trained
weights back into the SAE objects, so evaluation uses the same code as everything else. tests/test_grid.py checks that a grid trains each SAE exactly as
``aen_mini.train.loop.train`` does, for every variant family it supports.

Supported: the ReLU family (relu_l1, elastic_net, adaptive_lasso, aen; one grid may mix them) or TopK (one k per
grid, with or without AuxK). Not supported: BatchTopK (its threshold update syncs with the host), distributed
training, and resampling: it picks each model's dead latents from a batch of its own worst-reconstructed inputs
and rewrites their weights and Adam moments at chosen steps, a data-dependent, per-model surgery that would have to
run outside the captured step graph and break the one-replay-per-step design; runs that need it use
``aen_mini.train.loop.train`` with ``aen_mini.train.resample``. Data come from ``SpikedStreams`` (spiked batches drawn on the device, several streams at
once, e.g. one per (rho, seed)) or any callable returning (streams, batch, d_in).
"""
from __future__ import annotations

from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from aen_mini.data.synthetic import spiked_dictionary
from aen_mini.sae import SAE
from aen_mini.sae.adaptive import A_FLOOR, W_MIN
from aen_mini.sae.base import INITS
from aen_mini.train.config import TrainConfig
from aen_mini.train.grid_grads import relu_family_grads
from aen_mini.validate import check_choice, check_nonnegative_int, check_positive_int, option

__all__ = ["SpikedStreams", "GridRun", "GridConfig", "GridTrainer", "train_grid"]

_RELU_FAMILY = ("relu_l1", "elastic_net", "adaptive_lasso", "aen")
WARMUP_STEPS = 3  # eager steps before the CUDA graph is captured (Adam's lazy state, cuBLAS workspaces)


class SpikedStreams:
    """Spiked batches for several (rho, seed) streams at once, drawn on ``device`` with a torch generator there.

    Stream s uses ``spiked_dictionary(n, m, rho_s, seed_s)``, the same dictionary as ``SpikedSource``; samples
    come from this object's generator, so they differ from ``SpikedSource``'s CPU stream but follow the same law.
    ``centre``: subtract each stream's population mean (as ``SpikedSource(centre=True)``).
    """

    def __init__(self, n: int, m: int, k: int, streams: list[tuple[float, int]], *, magnitude: tuple[float, float] = (1.0, 3.0),
                 centre: bool = False, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.n, self.m, self.k = check_positive_int("n", n), check_positive_int("m", m), check_positive_int("k", k)
        if not streams:
            raise ValueError("streams must list at least one (rho, seed) pair")
        self.streams = [(float(rho), int(s)) for rho, s in streams]
        self.device = torch.device(device)
        self.low, self.high = float(magnitude[0]), float(magnitude[1])
        self.dictionaries = torch.stack([spiked_dictionary(n, m, rho, s) for rho, s in self.streams]).to(self.device)
        mean = self.dictionaries.sum(2) * (k / m) * (self.low + self.high) / 2
        self.mean = mean if centre else torch.zeros_like(mean)
        self.centre = centre
        # On CUDA the default generator is the one CUDA graphs can capture; seed it here.
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
            self.generator = None
        else:
            self.generator = torch.Generator(self.device).manual_seed(seed)

    def draw(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (S, B, n), codes (S, B, m)): exactly k atoms per sample, magnitudes uniform in [low, high]."""
        g = generator if generator is not None else self.generator
        shape = (len(self.streams), batch_size, self.m)
        support = torch.rand(shape, device=self.device, generator=g).topk(self.k, dim=-1).indices
        values = torch.empty((*shape[:2], self.k), device=self.device).uniform_(self.low, self.high, generator=g)
        codes = torch.zeros(shape, device=self.device).scatter_(-1, support, values)
        x = torch.bmm(codes, self.dictionaries.transpose(1, 2))
        return (x - self.mean[:, None, :] if self.centre else x), codes

    def __call__(self, batch_size: int) -> torch.Tensor:
        return self.draw(batch_size)[0]

    def held_out(self, batch_size: int, seed: int = 12345) -> tuple[torch.Tensor, torch.Tensor]:
        """A held-out draw from a separate generator (fixed by ``seed``), disjoint from the training stream."""
        return self.draw(batch_size, torch.Generator(self.device).manual_seed(seed))


@dataclass
class GridRun:
    """One SAE of the grid, the data stream it trains on, and the per-run training options."""

    sae: SAE
    stream: int = 0
    init: str = "ours"  # aen_mini.sae.base.INITS; "ours" also puts b_dec at the first batch's mean
    l1_warmup_steps: int = 0  # linear warm-up of the l1 and l2 coefficients, as TrainConfig.l1_warmup_steps

    def __post_init__(self) -> None:
        check_choice("init", self.init, INITS)
        check_nonnegative_int("l1_warmup_steps", self.l1_warmup_steps)
        check_nonnegative_int("stream", self.stream)


# TrainConfig options a grid does not implement (each run's seed and init live in its GridRun; one fp32 step graph).
_NOT_IN_A_GRID = {"seed": 0, "precision": "fp32", "compile": None, "fast": False, "init_b_dec": True, "init": "ours",
                  "l1_warmup_steps": 0, "resample_every": 0, "checkpoint_every": 0, "checkpoint_path": None,
                  "progress": True}  # train_grid(progress=...) shows the bar


@dataclass
class GridConfig(TrainConfig):
    """The schedule every run of a grid shares: TrainConfig's fields with their meaning and checks (lr_at included),
    plus the grid's CUDA graph switch; the TrainConfig options a grid does not implement are refused by name."""

    log_every: int = option(0, "steps between logged statistics (trainer.history; 0: none)")
    graph: bool = option(True, "capture the step as a CUDA graph (CUDA only)")
    steps_per_graph: int = option(16, "training steps captured in one CUDA graph (one replay runs them all)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("steps_per_graph", self.steps_per_graph)
        changed = [name for name, default in _NOT_IN_A_GRID.items() if getattr(self, name) != default]
        if changed:
            raise ValueError(f"a grid does not implement {changed} (set seed and init per run in GridRun; train "
                             "the others with aen_mini.train.loop.train)")


def _column(runs: list[GridRun], read: Callable[[SAE], float], device: torch.device, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([float(read(r.sae)) for r in runs], device=device, dtype=dtype)


class GridTrainer:
    """Stacked parameters and per-model hyperparameters of a grid; ``step`` trains every model by one step."""

    def __init__(self, runs: list[GridRun], data: Callable[[int], torch.Tensor], cfg: GridConfig) -> None:
        if not runs:
            raise ValueError("a grid needs at least one run")
        variants = {r.sae.variant for r in runs}
        self.topk = variants == {"topk"}
        if not (self.topk or variants <= set(_RELU_FAMILY)):
            raise ValueError(f"a grid holds ReLU-family SAEs {_RELU_FAMILY} or TopK SAEs, not a mix: got {sorted(variants)}")
        shapes = {(r.sae.d_in, r.sae.d_sae) for r in runs}
        if len(shapes) != 1:
            raise ValueError(f"every SAE of a grid has the same (d_in, d_sae), got {sorted(shapes)}")
        (self.d_in, self.d_sae), = shapes
        dev = self.device = torch.device(cfg.device)
        self.runs, self.data, self.cfg = runs, data, cfg
        for r in runs:
            if r.init == "authors":
                r.sae.init_like_authors_(r.sae.seed)
        stack = lambda name: torch.stack([getattr(r.sae, name).detach().float() for r in runs]).to(dev)  # noqa: E731
        self.params = {name: stack(name).requires_grad_() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        self.stream = torch.tensor([r.stream for r in runs], device=dev)
        self.scale = _column(runs, lambda s: 1.0 / s.d_in if s.loss_scale == "mean" else 1.0, dev)
        self.l1 = _column(runs, lambda s: getattr(s, "l1_coeff", 0.0), dev)
        self.l2 = _column(runs, lambda s: getattr(s, "l2_coeff", 0.0), dev)
        self.warm = torch.tensor([float(r.l1_warmup_steps) for r in runs], device=dev)
        self.ours_b_dec = torch.tensor([r.init == "ours" for r in runs], device=dev)
        self.adaptive = _column(runs, lambda s: hasattr(s, "reweighting"), dev)
        rw = lambda name, default: _column(  # noqa: E731
            runs, lambda s: getattr(s.reweighting, name) if hasattr(s, "reweighting") else default, dev)
        self.gamma, self.w_max = rw("gamma", 1.0)[:, None], rw("w_max", 10.0)[:, None]
        self.ema_rate = 1.0 - rw("ema_beta", 0.0)[:, None]
        w_start, w_steps, n_ref = rw("warmup_start", 0), rw("warmup_steps", 0), rw("n_ref", 1)
        self.n_ref_max = int(n_ref.max().item())
        self.ref_weight = (torch.arange(self.n_ref_max, device=dev) < n_ref[:, None]) / n_ref[:, None]
        # the reweighting ramp is clamp((t - start) * rate, 0, 1): rate 1 / warmup_steps, or a step from 0 to 1 at
        # warmup_start (start one step earlier, rate 1) when there is no ramp, or 0 for the models without weights
        rate = torch.where(w_steps > 0, 1.0 / w_steps.clamp_min(1), 1.0) * self.adaptive
        self.ramp_rate, self.ramp_offset = rate, -torch.where(w_steps > 0, w_start, w_start - 1) * rate
        self.any_adaptive = bool(self.adaptive.any())
        # per-step constants of the ReLU family's gradient (grid_grads): its coefficients divided by the batch
        batch = cfg.batch_size
        self.err_coef = (-2.0 * self.scale / batch)[:, None, None]
        self.l1_batch, self.l2_batch = self.l1 / batch, 2.0 * self.l2 / batch
        # the l1/l2 warm-up factor is clamp((t + 1) / warm, max=1), and 1 (an infinite rate) without a warm-up
        self.warm_rate = torch.where(self.warm > 0, 1.0 / self.warm.clamp_min(1), float("inf"))
        self.ones = torch.ones(len(runs), self.d_sae, device=dev)
        self.ema = torch.stack([r.sae.reweighting.ema.float() if hasattr(r.sae, "reweighting")
                                else torch.ones(self.d_sae) for r in runs]).to(dev)
        self.dead_after = _column(runs, lambda s: s.dead_after_tokens, dev, torch.long)
        self.tokens_since_fired = torch.stack([r.sae.tokens_since_fired for r in runs]).to(dev)
        if self.topk:
            ks = {r.sae.k for r in runs}
            if len(ks) != 1:
                raise ValueError(f"a TopK grid has one k, got {sorted(ks)}")
            (self.k,) = ks
            self.aux_k = min(self.d_sae, max(r.sae.aux_k for r in runs))
            self.aux_coeff = _column(runs, lambda s: s.aux_coeff, dev)
        clip = cfg.grad_clip or 0.0
        self.clip = clip
        capturable = dev.type == "cuda" and cfg.graph
        # on CUDA Adam reads the learning rate from a tensor that the step itself sets from the schedule
        self.lr = torch.tensor(cfg.lr, device=dev) if capturable else cfg.lr
        self.schedule = (torch.tensor([cfg.lr_at(s) for s in range(cfg.steps)], device=dev) if capturable else None)
        for p in self.params.values():  # gradients live outside any CUDA graph's memory pool, written in place
            p.grad = torch.zeros_like(p)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=self.lr, betas=cfg.adam_betas,
                                          capturable=capturable, fused=True)
        self.t = torch.zeros((), device=dev)  # steps done, on the device (warm-ups and the adaptive ramp read it)
        self.x = torch.zeros(len(runs), cfg.batch_size, self.d_in, device=dev)
        self._codes: dict[str, torch.Tensor] = {}  # the last step's codes h and error x - x_hat
        self._codes_of: dict[int, dict[str, torch.Tensor]] = {}  # ... as each CUDA graph leaves them
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # steps per replay -> graph
        self.graph_error: str | None = None
        self.step_count = 0
        self.history: list[dict] = []

    # --- one step, all on the device -----------------------------------------------------------------
    def adaptive_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each model's effective l1 weights w~ (G, d_sae) and its reference level (G,), as AdaptiveL1Weights."""
        ref = (self.ema.topk(self.n_ref_max, dim=-1).values * self.ref_weight).sum(-1)
        w = (ref[:, None] / self.ema.clamp_min(A_FLOOR)).pow(self.gamma).clamp_(W_MIN).clamp_(max=self.w_max)
        ramp = torch.addcmul(self.ramp_offset, self.t, self.ramp_rate).clamp_(0, 1)
        return torch.lerp(self.ones, w, ramp[:, None]), ref

    def _set_lr(self) -> None:
        if self.schedule is not None:  # on the device, so that one graph replay can span several steps
            self.lr.copy_(torch.take(self.schedule, self.t.long().clamp_(max=len(self.schedule) - 1)))
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr_at(self.step_count)

    def _draw(self) -> None:
        self.x = self.data(self.cfg.batch_size)[self.stream]

    def _relu_forward_backward(self) -> None:
        warm = (self.t + 1).mul(self.warm_rate).clamp_(max=1.0)
        l1 = (self.l1_batch * warm)[:, None]
        if self.any_adaptive:
            l1 = self.adaptive_weights()[0] * l1
        h, err = relu_family_grads(self.params, self.x, self.err_coef, l1, self.l2_batch * warm)
        self._codes = {"err": err, "h": h}

    def _topk_forward_backward(self) -> None:
        p, x = self.params, self.x
        pre = torch.baddbmm(p["b_enc"][:, None, :], x - p["b_dec"][:, None, :], p["W_enc"].transpose(1, 2))
        values, idx = pre.topk(self.k, dim=-1)
        h = torch.zeros_like(pre).scatter(-1, idx, values.relu())
        err = x - torch.baddbmm(p["b_dec"][:, None, :], h, p["W_dec"].transpose(1, 2))
        loss = err.pow(2).sum(-1).mean(-1) * self.scale
        dead = self.tokens_since_fired >= self.dead_after[:, None]
        vals, idx = pre.masked_fill(~dead[:, None, :], float("-inf")).topk(self.aux_k, dim=-1)
        h_aux = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        aux = (err.detach() - torch.bmm(h_aux, p["W_dec"].transpose(1, 2))).pow(2).sum(-1).mean(-1)
        (loss + self.aux_coeff * aux * dead.any(-1)).sum().backward()
        self._codes = {"err": err.detach(), "h": h.detach()}

    @torch.no_grad()
    def _update(self) -> None:
        p = self.params
        if self.clip:
            norm = sum(g.grad.pow(2).flatten(1).sum(1) for g in p.values()).sqrt()
            coef = (self.clip / (norm + 1e-6)).clamp(max=1.0)
            for g in p.values():
                g.grad.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
        self.optimizer.step()
        if self.topk:  # autograd adds into the gradients; the ReLU family's are overwritten
            self.optimizer.zero_grad(set_to_none=False)
        p["W_dec"].div_(torch.linalg.vector_norm(p["W_dec"], dim=1, keepdim=True).clamp_min_(1e-12))
        h = self._codes["h"]  # codes are >= 0: "fired" is a positive maximum, |h| is h
        self.tokens_since_fired.add_(h.shape[1]).masked_fill_(h.amax(dim=1) > 0, 0)
        self.ema.lerp_(h.mean(dim=1), self.ema_rate)
        self.t.add_(1)

    def _full_step(self) -> None:
        self._set_lr()
        self._draw()
        if self.step_count == 0:
            with torch.no_grad():  # "ours": b_dec at the first batch's mean
                self.params["b_dec"].copy_(torch.where(self.ours_b_dec[:, None], self.x.mean(1), self.params["b_dec"]))
        self._topk_forward_backward() if self.topk else self._relu_forward_backward()
        self._update()

    def step(self) -> None:
        """One training step of every model (eager for the first steps, then a CUDA graph replay on CUDA)."""
        self.run(1)

    def run(self, steps: int) -> None:
        """``steps`` training steps of every model: on CUDA after the first few, ``cfg.steps_per_graph`` per graph
        replay while that many remain, then one per replay; eager elsewhere or if a capture fails."""
        use_graph = self.device.type == "cuda" and self.cfg.graph
        while steps > 0:
            if not use_graph or self.graph_error is not None or self.step_count < WARMUP_STEPS:
                self._eager(use_graph)
                steps -= 1
                continue
            n = self.cfg.steps_per_graph if steps >= self.cfg.steps_per_graph else 1
            if n not in self.graphs and not self._capture(n):
                continue  # capture failed: graph_error says why, the loop goes on eagerly
            self.graphs[n].replay()
            self._codes = self._codes_of[n]
            self.step_count += n
            steps -= n

    def _eager(self, use_graph: bool) -> None:
        side = torch.cuda.Stream(self.device) if use_graph else None  # capture wants warm-up off the main stream
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side) if side is not None else _nullcontext():
            self._full_step()
        if side is not None:
            torch.cuda.current_stream(self.device).wait_stream(side)
        self.step_count += 1

    def _capture(self, n: int) -> bool:
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                for _ in range(n):
                    self._full_step()
        except RuntimeError as error:  # nothing recorded during a failed capture has run
            self.graph_error = f"CUDA graph capture failed ({str(error)[:200]})"
            return False
        # capture records without running: the caller's replay is the steps' work
        self.graphs[n], self._codes_of[n] = graph, dict(self._codes)
        return True

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """The graph of ``cfg.steps_per_graph`` steps (or of one step if only that was captured); None if none."""
        return self.graphs.get(self.cfg.steps_per_graph) or self.graphs.get(1)

    @property
    def last(self) -> dict[str, torch.Tensor]:
        """The last step's codes h (G, B, m), error x - x_hat, and per model its mse and L0 (computed on request,
        so the step itself never spends kernels on them)."""
        h, err = self._codes["h"], self._codes["err"]
        return {"h": h, "err": err, "mse": err.pow(2).sum(-1).mean(-1) * self.scale,
                "l0": (h > 0).float().sum(-1).mean(-1)}

    def log(self) -> dict[str, list[float]]:
        """Per-model statistics of the last step: mse, l0, training dead % (per dead_after_tokens), and for the
        adaptive models the reference level and the number of weights at the clip w_max."""
        weights, ref = self.adaptive_weights()
        at_clip = (weights >= self.w_max * (1 - 1e-6)).sum(-1) * self.adaptive
        dead = (self.tokens_since_fired >= self.dead_after[:, None]).float().mean(-1) * 100
        last = self.last
        return {"step": self.step_count, "mse": last["mse"].tolist(), "l0": last["l0"].tolist(),
                "dead_pct": dead.tolist(), "ref": ref.tolist(), "w_at_clip": at_clip.tolist()}

    @torch.no_grad()
    def unstack(self) -> list[SAE]:
        """Write the trained weights and running state back into each run's SAE (on the grid's device); return them."""
        for i, r in enumerate(self.runs):
            sae = r.sae.to(self.device)
            for name, value in self.params.items():
                getattr(sae, name).copy_(value[i])
            sae.tokens_since_fired.copy_(self.tokens_since_fired[i])
            if hasattr(sae, "reweighting"):
                sae.reweighting.ema.copy_(self.ema[i])
                sae.reweighting.step.fill_(self.step_count)
            sae.eval()
        return [r.sae for r in self.runs]


def train_grid(runs: list[GridRun], data: Callable[[int], torch.Tensor], cfg: GridConfig,
               progress: bool = False) -> tuple[list[SAE], GridTrainer]:
    """Train every run of the grid for ``cfg.steps`` steps; return the trained SAEs and the trainer (its
    ``history`` holds the logs, ``graph_error`` why a CUDA graph was not used, if it was not)."""
    from tqdm.auto import tqdm

    trainer = GridTrainer(runs, data, cfg)
    with tqdm(total=cfg.steps, disable=not progress, unit="step", mininterval=5) as bar:
        while trainer.step_count < cfg.steps:
            left = cfg.steps - trainer.step_count
            n = min(left, cfg.log_every - trainer.step_count % cfg.log_every) if cfg.log_every else left
            trainer.run(n)
            bar.update(n)
            if cfg.log_every and trainer.step_count % cfg.log_every == 0:
                trainer.history.append(trainer.log())
    return trainer.unstack(), trainer

