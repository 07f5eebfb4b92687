"""Many small SAEs trained at once as one batched model: a whole grid (methods x coefficients x seeds) is one job.

Each SAE is built as usual (``make_sae``: its hyperparameters, its seed's initial weights, optionally the authors'
init); the grid stacks their parameters along a leading model axis, runs every matmul as one batched product,
keeps one Adam over the stacked tensors (Adam is elementwise, so this is each model's own Adam), clips each
model's gradient by its own norm, and applies each model's after-step (decoder renormalisation, firing counters,
the adaptive EMA). On CUDA the whole step, data included, is captured as one CUDA graph: a 50k-step run is then
bound by the GPU, not by Python. ``unstack`` writes the trained weights back into the SAE objects, so evaluation
uses the same code as everything else. tests/test_grid.py checks that a grid trains each SAE exactly as
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
        values = torch.rand((*shape[:2], self.k), device=self.device, generator=g) * (self.high - self.low) + self.low
        codes = torch.zeros(shape, device=self.device).scatter_(-1, support, values)
        return torch.bmm(codes, self.dictionaries.transpose(1, 2)) - self.mean[:, None, :], codes

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

    def __post_init__(self) -> None:
        super().__post_init__()
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
        self.gamma, self.beta, self.w_max = rw("gamma", 1.0), rw("ema_beta", 0.0), rw("w_max", 10.0)
        self.w_start, self.w_steps, self.n_ref = rw("warmup_start", 0), rw("warmup_steps", 0), rw("n_ref", 1)
        self.n_ref_max = int(self.n_ref.max().item())
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
        self.lr = torch.tensor(cfg.lr, device=dev) if capturable else cfg.lr
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=self.lr, betas=cfg.adam_betas,
                                          capturable=capturable, foreach=True)
        self.t = torch.zeros((), device=dev)  # steps done, on the device (warm-ups and the adaptive ramp read it)
        self.x = torch.zeros(len(runs), cfg.batch_size, self.d_in, device=dev)
        self.last: dict[str, torch.Tensor] = {}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None
        self.step_count = 0
        self.history: list[dict] = []

    # --- one step, all on the device -----------------------------------------------------------------
    def adaptive_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each model's effective l1 weights w~ (G, d_sae) and its reference level (G,), as AdaptiveL1Weights."""
        top = self.ema.topk(self.n_ref_max, dim=-1).values
        keep = torch.arange(self.n_ref_max, device=self.device) < self.n_ref[:, None]
        ref = (top * keep).sum(-1) / self.n_ref
        w = (ref[:, None] / self.ema.clamp_min(A_FLOOR)).pow(self.gamma[:, None])
        w = torch.minimum(w.clamp_min(W_MIN), self.w_max[:, None])
        since = self.t - self.w_start
        ramp = torch.where(self.w_steps > 0, (since / self.w_steps.clamp_min(1)).clamp(0, 1), (since >= 0).float())
        return 1.0 + (w - 1.0) * (ramp * self.adaptive)[:, None], ref

    def _draw(self) -> None:
        self.x.copy_(self.data(self.cfg.batch_size)[self.stream])

    def _forward_backward(self) -> None:
        p, x = self.params, self.x
        pre = torch.baddbmm(p["b_enc"][:, None, :], x - p["b_dec"][:, None, :], p["W_enc"].transpose(1, 2))
        if self.topk:
            values, idx = pre.topk(self.k, dim=-1)
            h = torch.zeros_like(pre).scatter(-1, idx, values.relu())
        else:
            h = pre.relu()
        x_hat = torch.baddbmm(p["b_dec"][:, None, :], h, p["W_dec"].transpose(1, 2))
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean(-1) * self.scale
        loss = mse
        if not self.topk:
            warm = torch.where(self.warm > 0, ((self.t + 1) / self.warm.clamp_min(1)).clamp(max=1.0), 1.0)
            weights, _ = self.adaptive_weights()
            loss = loss + self.l1 * warm * (h * weights[:, None, :]).sum(-1).mean(-1)
            loss = loss + self.l2 * warm * h.pow(2).sum(-1).mean(-1)
        else:
            dead = self.tokens_since_fired >= self.dead_after[:, None]
            vals, idx = pre.masked_fill(~dead[:, None, :], float("-inf")).topk(self.aux_k, dim=-1)
            h_aux = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
            aux = (err.detach() - torch.bmm(h_aux, p["W_dec"].transpose(1, 2))).pow(2).sum(-1).mean(-1)
            loss = loss + self.aux_coeff * aux * dead.any(-1)
        loss.sum().backward()
        self.last = {"mse": mse.detach(), "l0": (h > 0).float().sum(-1).mean(-1), "h": h.detach()}

    @torch.no_grad()
    def _update(self) -> None:
        p = self.params
        if self.clip:
            norm = sum(g.grad.pow(2).flatten(1).sum(1) for g in p.values()).sqrt()
            coef = (self.clip / (norm + 1e-6)).clamp(max=1.0)
            for g in p.values():
                g.grad.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        p["W_dec"].div_(p["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-12))
        h = self.last["h"]
        fired = (h > 0).any(dim=1)
        self.tokens_since_fired.add_(h.shape[1]).mul_(~fired)
        self.ema.lerp_(h.abs().mean(dim=1), (1.0 - self.beta)[:, None])
        self.t.add_(1)

    def _full_step(self) -> None:
        self._draw()
        self._forward_backward()
        self._update()

    def step(self) -> None:
        """One training step of every model (eager for the first steps, then a CUDA graph replay on CUDA)."""
        if isinstance(self.lr, float):
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr_at(self.step_count)
        else:
            self.lr.fill_(self.cfg.lr_at(self.step_count))
        use_graph = self.device.type == "cuda" and self.cfg.graph and self.graph_error is None
        if self.graph is not None:
            self.graph.replay()
        elif use_graph and self.step_count >= WARMUP_STEPS:
            self._capture()
        else:
            side = torch.cuda.Stream(self.device) if use_graph else None  # capture wants warm-up off the main stream
            if side is not None:
                side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side) if side is not None else _nullcontext():
                self._draw()
                if self.step_count == 0:
                    with torch.no_grad():  # "ours": b_dec at the first batch's mean
                        self.params["b_dec"].copy_(torch.where(self.ours_b_dec[:, None], self.x.mean(1),
                                                               self.params["b_dec"]))
                self._forward_backward()
                self._update()
            if side is not None:
                torch.cuda.current_stream(self.device).wait_stream(side)
        self.step_count += 1

    def _capture(self) -> None:
        torch.cuda.synchronize(self.device)
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._full_step()
        except RuntimeError as error:  # nothing recorded during a failed capture has run: go on eagerly
            self.graph_error = f"CUDA graph capture failed ({str(error)[:200]})"
            self.optimizer.zero_grad(set_to_none=True)
            self._full_step()
            return
        self.graph = graph
        self.graph.replay()  # capture records without running: this replay is this step's work

    def log(self) -> dict[str, list[float]]:
        """Per-model statistics of the last step: mse, l0, training dead % (per dead_after_tokens), and for the
        adaptive models the reference level and the number of weights at the clip w_max."""
        weights, ref = self.adaptive_weights()
        at_clip = (weights >= self.w_max[:, None] * (1 - 1e-6)).sum(-1) * self.adaptive
        dead = (self.tokens_since_fired >= self.dead_after[:, None]).float().mean(-1) * 100
        return {"step": self.step_count, "mse": self.last["mse"].tolist(), "l0": self.last["l0"].tolist(),
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
    for _ in tqdm(range(cfg.steps), disable=not progress, unit="step", mininterval=5):
        trainer.step()
        if cfg.log_every and trainer.step_count % cfg.log_every == 0:
            trainer.history.append(trainer.log())
    return trainer.unstack(), trainer

