"""The replication's training (issue 11): the grids of both protocols trained as batched models and scored, and
the speed check of many SAEs as one model."""
from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import torch

from aen_mini.train.grid import GridConfig, GridRun, GridTrainer, SpikedStreams, train_grid
from aen_mini.eval.metrics import explained_variance, support_scores
from aen_mini.experiments import recipes
from aen_mini.sae import make_sae
from aen_mini.experiments.replication import (AUTHORS_GRID, AUTHORS_GRID_NARROW, CALIBRATION_POINTS, Cell, DENSITY_BINS,
                                              L1_GUESS, PROTOCOLS, Protocol, REFINE_POINTS, REFINE_ROUNDS, REL_TOL, Size,
                                              TARGET_L0,
                                              ours_protocol)

__all__ = ["cell_hyper", "controlled_streams", "dead_pcts", "first_grid", "grid_config", "held_out_l0", "interpolate_l1", "protocol_sae",
           "refine_l1", "run_authors", "run_controlled", "score_grid",
           "speed_benchmark"]


# --- running a grid and scoring it ------------------------------------------------------------------------
def _encode_all(trainer: GridTrainer, x: torch.Tensor) -> torch.Tensor:
    """Codes (G, N, d_sae) of every model on its own stream's samples x (S, N, n)."""
    p = trainer.params
    with torch.no_grad():
        xs = x[trainer.stream]
        pre = torch.baddbmm(p["b_enc"][:, None, :], xs - p["b_dec"][:, None, :], p["W_enc"].transpose(1, 2))
        if trainer.topk:
            values, idx = pre.topk(trainer.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, values.relu())
        return pre.relu()


def _held_out(streams: SpikedStreams, size: Size) -> tuple[torch.Tensor, torch.Tensor]:
    return streams.held_out(size.eval_samples, seed=1)


def _firing_counts(trainer: GridTrainer, streams: SpikedStreams, size: Size) -> torch.Tensor:
    """How many of ``size.dead_window`` held-out samples each latent fires on: (G, d_sae)."""
    chunk = max(256, min(16384, 2 ** 26 // (len(trainer.runs) * size.d_sae)))
    counts = torch.zeros(len(trainer.runs), size.d_sae, device=trainer.device)
    g = torch.Generator(trainer.device).manual_seed(2)
    done = 0
    while done < size.dead_window:
        n = min(chunk, size.dead_window - done)
        x, _ = streams.draw(n, g)
        counts += (_encode_all(trainer, x) > 0).sum(1)
        done += n
    return counts


def dead_pcts(trainer: GridTrainer, streams: SpikedStreams, size: Size) -> list[float]:
    """Dead % of every model over ``size.dead_window`` held-out samples (score_grid's count, without the rest)."""
    return (100.0 * (_firing_counts(trainer, streams, size) == 0).float().mean(-1)).tolist()


def _density_hist(counts: torch.Tensor, window: int) -> dict[str, Any]:
    density = counts.double() / window
    alive = density[density > 0].log10().clamp(DENSITY_BINS[0], DENSITY_BINS[-1])
    hist = torch.histogram(alive.cpu(), bins=torch.tensor(DENSITY_BINS, dtype=torch.float64)).hist
    return {"bins_log10": DENSITY_BINS, "counts": [int(c) for c in hist.tolist()], "dead": int((density == 0).sum())}


def _lsa(cos: Any) -> Any:
    from scipy.optimize import linear_sum_assignment
    return linear_sum_assignment(cos, maximize=True)


def _matchings(cos_matrices: list[Any], workers: int) -> list[torch.Tensor]:
    """Hungarian matchings (true atom -> learned latent), in parallel processes when there are many."""
    if workers > 1 and len(cos_matrices) > 4:
        import multiprocessing
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            solved = list(pool.map(_lsa, cos_matrices))
    else:
        solved = [_lsa(c) for c in cos_matrices]
    out = []
    for (rows, cols), c in zip(solved, cos_matrices):
        matching = torch.full((c.shape[0],), -1, dtype=torch.long)
        matching[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
        out.append(matching)
    return out


def score_grid(trainer: GridTrainer, streams: SpikedStreams, size: Size, which: list[int], workers: int) -> list[dict]:
    """L0, EV, support F1, dead % over the dead window and the firing-density histogram of models ``which``."""
    x, codes = _held_out(streams, size)
    counts = _firing_counts(trainer, streams, size)
    h_all = _encode_all(trainer, x)
    p = trainer.params
    cos = [(streams.dictionaries[trainer.runs[i].stream].T @ p["W_dec"][i].detach()).cpu().numpy() for i in which]
    matchings = _matchings(cos, workers)
    out = []
    for i, matching in zip(which, matchings):
        s = trainer.runs[i].stream
        h = h_all[i]
        x_hat = h @ p["W_dec"][i].detach().T + p["b_dec"][i].detach()
        out.append({"l0": (h > 0).float().sum(-1).mean().item(), "ev": explained_variance(x[s], x_hat),
                    "support_f1": support_scores(codes[s].cpu(), h.cpu(), matching)["f1"],
                    "dead_pct": 100.0 * (counts[i] == 0).float().mean().item(), "dead_window_samples": size.dead_window,
                    "firing_density": _density_hist(counts[i], size.dead_window)})
    return out


def held_out_l0(trainer: GridTrainer, streams: SpikedStreams, size: Size) -> list[float]:
    x, _ = _held_out(streams, size)
    return (_encode_all(trainer, x) > 0).float().sum(-1).mean(-1).tolist()


def grid_config(protocol: Protocol, device: str, log_every: int = 0) -> GridConfig:
    return GridConfig(steps=protocol.steps, batch_size=protocol.batch_size, lr=protocol.lr,
                      lr_decay_start=protocol.lr_decay_start, grad_clip=protocol.grad_clip, device=device,
                      log_every=log_every)


def protocol_sae(variant: str, size: Size, protocol: Protocol, seed: int, hyper: dict[str, float]) -> Any:
    common = {"dead_after_tokens": protocol.dead_after_steps * protocol.batch_size, "seed": seed,
              "loss_scale": protocol.loss_scale}
    if variant == "topk":
        return make_sae("topk", size.n, size.d_sae, k=size.k, aux_coeff=hyper.get("aux_coeff", 0.0), **common)
    if variant in ("aen", "adaptive_lasso"):
        hyper = {"gamma": protocol.gamma, "ema_beta": protocol.ema_beta, "ref_pct": protocol.ref_pct,
                 "warmup_start": protocol.warmup_start, "warmup_steps": protocol.warmup_steps, **hyper}
    return make_sae(variant, size.n, size.d_sae, **hyper, **common)


def _history_of(trainer: GridTrainer, i: int) -> list[dict]:
    return [{key: (h[key][i] if isinstance(h[key], list) else h[key]) for key in ("step", "l0", "dead_pct", "ref", "w_at_clip")}
            for h in trainer.history]


# --- the authors' protocol -------------------------------------------------------------------------------------
def run_authors(rhos: list[float], seeds: list[int], size: Size, device: str, workers: int = 1,
                progress: bool = False, grid: dict[str, list[dict[str, float]]] | None = None,
                families: tuple[tuple[str, ...], ...] = (("relu_l1", "elastic_net", "aen", "adaptive_lasso"),
                                                         ("topk",)), grid_name: str | None = None,
                rho_grids: dict[float, dict[str, list[dict[str, float]]]] | None = None, init: str = "authors") -> list[dict]:
    """Every point of ``grid`` (default AUTHORS_GRID) at every (rho, seed), one batched job per family (ReLU
    family, TopK); returns one record per (method, rho, seed): the grid point with L0 closest to 16 (their
    selection), fully scored, with the grid's (coefficients, L0) listed in ``grid``. ``rho_grids``: a grid per rho
    instead (e.g. the authors' own pick at each rho), all rhos still one job; ``init``: "authors" (their protocol) or
    "ours", to see what our init does under their protocol."""
    grid = AUTHORS_GRID if grid is None else grid
    protocol = PROTOCOLS["authors"].scaled(size.step_scale)
    pairs = [(rho, seed) for rho in rhos for seed in seeds]
    streams = SpikedStreams(size.n, size.m, size.k, pairs, device=device, seed=1000 + len(pairs))
    target = TARGET_L0 * size.k / 16
    records = []
    for family in families:
        meta, runs = [], []
        for s, (rho, seed) in enumerate(pairs):
            for method in family:
                for hyper in (rho_grids[rho] if rho_grids else grid).get(method, []):
                    # their lambdas are in mean-scale units (sum-scale / n): keep the sum-scale value of the paper's
                    # size (n = 256) at smaller sizes, since the calibrated sum-scale l1 hardly depends on n
                    hyper = {k: v * 256 / size.n if k in ("l1_coeff", "l2_coeff") else v for k, v in hyper.items()}
                    hyper = hyper if method != "topk" else {}
                    runs.append(GridRun(protocol_sae(method, size, protocol, seed, hyper), stream=s, init=init))
                    meta.append((method, rho, seed, hyper))
        _, trainer = train_grid(runs, streams, grid_config(protocol, device, max(1, protocol.steps // 50)), progress)
        l0s = held_out_l0(trainer, streams, size)
        chosen: dict[tuple, int] = {}
        for i, (method, rho, seed, _hyper) in enumerate(meta):
            key = (method, rho, seed)
            if key not in chosen or abs(l0s[i] - target) < abs(l0s[chosen[key]] - target):
                chosen[key] = i
        order = list(chosen.values())
        for i, scores in zip(order, score_grid(trainer, streams, size, order, workers)):
            method, rho, seed, hyper = meta[i]
            tried = [{"hyper": meta[j][3], "l0": l0s[j]} for j in range(len(meta)) if meta[j][:3] == (method, rho, seed)]
            records.append({"protocol": "authors", "method": method, "rho": rho, "seed": seed, "init": init,
                            "l1_warmup": False, "aux": False, "centred": False, "steps": protocol.steps,
                            "batch_size": protocol.batch_size, "loss_scale": protocol.loss_scale,
                            "target_l0": target, "selection": "grid point with L0 closest to the target", **hyper,
                            "calibration_converged": abs(scores["l0"] / target - 1) <= REL_TOL, **scores,
                            "grid": tried,
                            "grid_name": grid_name or ("narrow" if grid is AUTHORS_GRID_NARROW else "full"),
                            "history": _history_of(trainer, i), "graph": trainer.graph is not None})
    return records


# --- our controlled study ----------------------------------------------------------------------------------------
def cell_hyper(cell: Cell, protocol: Protocol, l1: float) -> dict[str, float]:
    if cell.variant == "topk":
        return {"aux_coeff": protocol.aux_coeff if cell.aux else 0.0}
    hyper: dict[str, float] = {"l1_coeff": l1}
    if cell.variant in ("elastic_net", "aen"):
        hyper["l2_coeff"] = protocol.l2_ratio * l1
    if cell.variant == "aen":
        if cell.ema_beta is not None:
            hyper["ema_beta"] = cell.ema_beta
        if not cell.delay:
            hyper.update(warmup_start=0, warmup_steps=0)
        hyper.update({k: v for k, v in (("ref_pct", cell.ref_pct), ("w_max", cell.w_max)) if v is not None})
    return hyper


def _controlled_job(jobs: list[tuple[Cell, float, int, float]], rho_streams: SpikedStreams, stream_of: dict,
                    protocol: Protocol, size: Size, device: str, progress: bool) -> GridTrainer:
    runs = [GridRun(protocol_sae(cell.variant, size, protocol, seed, cell_hyper(cell, protocol, l1)),
                    stream=stream_of[(rho, seed)], init=cell.init,
                    l1_warmup_steps=int(recipes.L1_WARMUP_FRAC * protocol.steps) if cell.l1_warmup else 0) for cell, rho, seed, l1 in jobs]
    _, trainer = train_grid(runs, rho_streams, grid_config(protocol, device, max(1, protocol.steps // 30)), progress)
    return trainer


def controlled_streams(size: Size, rho: float, seeds: list[int], device: str = "cpu",
                       centre: bool = False) -> SpikedStreams:
    """The controlled study's data at ``rho``: one stream per seed, drawn from a generator fixed by rho and centring,
    so that a later study (resampling, the dead-window check) trains on the same dictionaries and batches."""
    return SpikedStreams(size.n, size.m, size.k, [(rho, seed) for seed in seeds], centre=centre, device=device,
                         seed=int(rho * 1000) + 7 * centre)


def _bracket(trials: list[dict], target: float) -> tuple[dict, dict] | None:
    """The first pair of neighbouring trials (by l1) whose L0 straddles the target, both L0 positive and distinct."""
    trials = sorted(trials, key=lambda t: t["l1_coeff"])
    for a, b in zip(trials, trials[1:]):
        if a["l0"] >= target >= b["l0"] and a["l0"] > 0 and b["l0"] > 0 and a["l0"] != b["l0"]:
            return a, b
    return None


def interpolate_l1(trials: list[dict], target: float) -> float:
    """The l1 whose L0 is the target, by log-log interpolation between the trials that bracket it (the closest
    trial's l1 when none do)."""
    pair = _bracket(trials, target)
    if pair is None:
        return min(trials, key=lambda t: abs(math.log(max(t["l0"], 1e-3) / target)))["l1_coeff"]
    a, b = pair
    t = math.log(a["l0"] / target) / math.log(a["l0"] / b["l0"])
    return math.exp(math.log(a["l1_coeff"]) + t * (math.log(b["l1_coeff"]) - math.log(a["l1_coeff"])))


def first_grid(variant: str, rho: float, size: Size) -> list[float]:
    """The calibration's first l1 values: CALIBRATION_POINTS values a factor 2 apart around L1_GUESS."""
    guess = L1_GUESS[variant if variant in L1_GUESS else "relu_l1"].get(rho, 1.0) * size.l1_scale
    return [guess * 2 ** (e - (CALIBRATION_POINTS - 1) / 2) for e in range(CALIBRATION_POINTS)]


def refine_l1(trials: list[dict], target: float, points: int = REFINE_POINTS) -> list[float]:
    """The next l1 values to try: ``points`` values spaced evenly in log l1 inside the bracket of the target; none
    when a trial is already within REL_TOL / 2 of the target or nothing brackets it. Near the target the L0 of
    ReLU + L1 can fall from 22 to 2 over a factor 2 of l1 (latents starve), where one log-log interpolation
    between grid points a factor 2 apart misses by 30 %; each round narrows the bracket by ``points + 1``."""
    pair = _bracket(trials, target)
    if pair is None or any(abs(t["l0"] / target - 1) <= REL_TOL / 2 for t in trials):
        return []
    lo, hi = math.log(pair[0]["l1_coeff"]), math.log(pair[1]["l1_coeff"])
    return [math.exp(lo + (hi - lo) * (i + 1) / (points + 1)) for i in range(points)]


def run_controlled(cells: list[Cell], rhos: list[float], seeds: list[int], size: Size, device: str, workers: int = 1,
                   progress: bool = False, refine_rounds: int = REFINE_ROUNDS) -> list[dict]:
    """Per rho: calibrate every calibrated cell on seed 0 (CALIBRATION_POINTS l1 values, one batched job, then up to
    ``refine_rounds`` jobs of ``refine_l1`` points inside the bracket), then train every cell on every seed at the
    interpolated l1 (one job for the ReLU family, one for TopK)."""
    protocol = ours_protocol(size)
    target = TARGET_L0 * size.k / 16
    records = []
    for centre in sorted({c.centre for c in cells}):
        for rho in rhos:
            pairs = [(rho, seed) for seed in seeds]
            streams = controlled_streams(size, rho, seeds, device, centre)
            stream_of = {pair: i for i, pair in enumerate(pairs)}
            group = [c for c in cells if c.centre == centre]
            calibrated = [c for c in group if c.calibrated]
            l1_star: dict[Cell, tuple[float, list[dict]]] = {}
            if calibrated:
                jobs = []
                for cell in calibrated:
                    jobs += [(cell, rho, seeds[0], l1) for l1 in first_grid(cell.variant, rho, size)]
                trials: dict[Cell, list[dict]] = {cell: [] for cell in calibrated}
                for round_ in range(1 + refine_rounds):
                    if not jobs:
                        break
                    trainer = _controlled_job(jobs, streams, stream_of, protocol, size, device, progress)
                    for (cell, _, _, l1), l0 in zip(jobs, held_out_l0(trainer, streams, size)):
                        trials[cell].append({"l1_coeff": l1, "l0": l0, "round": round_})
                    jobs = [(cell, rho, seeds[0], l1) for cell in calibrated for l1 in refine_l1(trials[cell], target)]
                for cell in calibrated:
                    l1_star[cell] = (interpolate_l1(trials[cell], target), trials[cell])
            for family in ([c for c in group if c.calibrated], [c for c in group if not c.calibrated]):
                if not family:
                    continue
                jobs = [(cell, rho, seed, l1_star.get(cell, (0.0, []))[0]) for cell in family for seed in seeds]
                trainer = _controlled_job(jobs, streams, stream_of, protocol, size, device, progress)
                scores = score_grid(trainer, streams, size, list(range(len(jobs))), workers)
                for i, ((cell, _, seed, l1), score) in enumerate(zip(jobs, scores)):
                    records.append({
                        "protocol": "ours", "method": cell.method, "variant": cell.variant, "rho": rho, "seed": seed,
                        "init": cell.init, "l1_warmup": cell.l1_warmup, "aux": cell.aux, "centred": cell.centre,
                        "ema_beta": (cell.ema_beta or protocol.ema_beta) if cell.variant == "aen" else None,
                        "delay": cell.delay if cell.variant == "aen" else None,
                        "ref_pct": (cell.ref_pct or protocol.ref_pct) if cell.variant == "aen" else None,
                        "w_max": (cell.w_max or 10.0) if cell.variant == "aen" else None,
                        "steps": protocol.steps, "batch_size": protocol.batch_size, "loss_scale": protocol.loss_scale,
                        "target_l0": target, "l1_coeff": l1 if cell.calibrated else None,
                        "l1_coeff_authors_scale": l1 / size.n if cell.calibrated else None,
                        "calibration_trials": l1_star.get(cell, (0.0, []))[1],
                        "refine_rounds": refine_rounds if cell.calibrated else None,
                        **score, "calibration_converged": abs(score["l0"] / target - 1) <= REL_TOL,
                        "history": _history_of(trainer, i), "graph": trainer.graph is not None})
    return records


# --- speed ----------------------------------------------------------------------------------------------------
def speed_benchmark(size: Size, device: str, steps: int,
                    grids: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (1, 1, 16), (64, 10, 16))) -> list[dict]:
    """Wall time of `steps` steps of batch 256 (the authors' budget at full size: 50,000), spiked data drawn on the
    device, for one AEN alone and for a grid of several trained at once; ``grids``: (models, fraction of ``steps``
    timed, steps per CUDA graph replay), e.g. (64, 10, 16): 64 models for steps / 10 steps, 16 steps per replay.
    The clock runs from the first step (eager warm-up and graph captures included) to the last step's end."""
    out = []
    for g, fraction, per_graph in grids:
        n_steps = max(10, steps // fraction)
        protocol = replace(PROTOCOLS["authors"], steps=n_steps)
        streams = SpikedStreams(size.n, size.m, size.k, [(0.9, 0)], device=device, seed=0)
        runs = [GridRun(protocol_sae("aen", size, protocol, i, {"l1_coeff": 0.005, "l2_coeff": 0.001}), init="authors")
                for i in range(g)]
        cfg = replace(grid_config(protocol, device), steps_per_graph=per_graph)
        t_setup = time.perf_counter()
        trainer = GridTrainer(runs, streams, cfg)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.run(n_steps)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        out.append({"models": g, "steps": n_steps, "batch_size": protocol.batch_size, "n": size.n, "d_sae": size.d_sae,
                    "steps_per_graph": per_graph, "setup_s": t0 - t_setup, "wall_s": wall, "wall_s_per_model": wall / g,
                    "ms_per_step": 1e3 * wall / n_steps, "cuda_graph": trainer.graph is not None,
                    "graph_error": trainer.graph_error})
    return out
