"""The synthetic sweep's statistics and report: per-cell summaries over seeds, the paper's claim checked against
them, and benchmarks/synthetic.md (the claim, the table, and how the numbers were made)."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from aen_mini.experiments.recipes import METHODS
from aen_mini.experiments.report import markdown_table as table

__all__ = ["TABLE_METRICS", "summarise", "markdown_table", "claim_check", "claim_statement", "report_markdown"]

TABLE_METRICS = ("dead_pct", "l0", "ev", "shrinkage", "support_f1", "dict_recovery", "recovery_mean_cos")


def summarise(records: list[dict[str, Any]], metrics: Iterable[str] = TABLE_METRICS) -> list[dict[str, Any]]:
    """Mean, (sample) standard deviation, min and max over seeds per (method, rho): keys ``<metric>_mean``,
    ``<metric>_std``, ``<metric>_min``, ``<metric>_max``."""
    metrics = list(metrics)
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["rho"]), []).append(r)
    rows = []
    for (method, rho), group in groups.items():
        row: dict[str, Any] = {"method": method, "label": group[0]["label"], "rho": rho, "n_seeds": len(group),
                               "l1_coeff": group[0]["l1_coeff"]}
        for metric in metrics:
            values = torch.tensor([float(r[metric]) for r in group], dtype=torch.float64)
            row[f"{metric}_mean"] = values.mean().item()
            row[f"{metric}_std"] = values.std().item() if len(group) > 1 else 0.0
            row[f"{metric}_min"], row[f"{metric}_max"] = values.min().item(), values.max().item()
        rows.append(row)
    return rows


def markdown_table(records: list[dict[str, Any]], metrics: Iterable[str] = TABLE_METRICS) -> str:
    """The summary as a Markdown table, one row per (method, rho), mean ± std over seeds."""
    metrics = list(metrics)
    rows = []
    for row in sorted(summarise(records, metrics), key=lambda r: (list(METHODS).index(r["method"]), r["rho"])):
        l1 = "k" if row["l1_coeff"] is None else f"{row['l1_coeff']:.3g}"
        rows.append([row["label"], f"{row['rho']:g}", l1,
                     *(f"{row[f'{m}_mean']:.3g} ± {row[f'{m}_std']:.2g}" for m in metrics)])
    return table(["method", "rho", "l1", *metrics], rows)


def claim_check(records: list[dict[str, Any]], dead_ratio: float = 0.5, ev_margin: float = 0.05) -> dict[str, Any]:
    """The paper's claim at the largest rho: AEN keeps far fewer dead latents than ReLU + L1 and TopK with
    competitive explained variance. Per baseline b: "far fewer" means AEN's mean dead % is at most
    ``dead_ratio`` times b's and at least 1 point below it; "competitive" means AEN's mean EV is at least b's
    minus ``ev_margin``. ``reproduced`` needs all four; None if a method is missing."""
    rows = {(r["method"], r["rho"]): r for r in summarise(records, ("dead_pct", "ev"))}
    rho = max(r["rho"] for r in records)
    get = {name: rows.get((name, rho)) for name in ("aen", "relu_l1", "topk_auxk")}
    result: dict[str, Any] = {"rho": rho, "dead_ratio": dead_ratio, "ev_margin": ev_margin,
                              **{f"{name}_{metric}": row[f"{metric}_mean"] if row else None
                                 for name, row in get.items() for metric in ("dead_pct", "ev")}}
    if any(row is None for row in get.values()):
        return {**result, "reproduced": None}
    aen_dead, aen_ev = result["aen_dead_pct"], result["aen_ev"]
    for b in ("relu_l1", "topk_auxk"):
        result[f"fewer_dead_than_{b}"] = aen_dead <= min(dead_ratio * result[f"{b}_dead_pct"], result[f"{b}_dead_pct"] - 1)
        result[f"competitive_ev_with_{b}"] = aen_ev >= result[f"{b}_ev"] - ev_margin
    result["reproduced"] = all(v for k, v in result.items() if k.startswith(("fewer_dead_than", "competitive_ev_with")))
    return result


def claim_statement(check: dict[str, Any]) -> str:
    """One plain paragraph saying whether the claim is reproduced, with the numbers it rests on."""
    if check["reproduced"] is None:
        return "The claim cannot be checked: AEN, ReLU + L1 and TopK + AuxK must all be in the sweep."
    names = {"relu_l1": "ReLU + L1", "topk_auxk": "TopK + AuxK"}
    parts = [f"{'far fewer' if check[f'fewer_dead_than_{b}'] else 'not far fewer'} dead latents than {name} "
             f"({check['aen_dead_pct']:.2g}% vs {check[f'{b}_dead_pct']:.2g}%) and "
             f"{'competitive' if check[f'competitive_ev_with_{b}'] else 'not competitive'} explained variance "
             f"({check['aen_ev']:.3f} vs {check[f'{b}_ev']:.3f})" for b, name in names.items()]
    verdict = "**Reproduced**" if check["reproduced"] else "**Not fully reproduced**"
    return (f"Claim: at high rho, AEN keeps far fewer dead latents than ReLU + L1 and TopK with competitive explained "
            f"variance. {verdict} in these runs. At rho = {check['rho']:g}, AEN has {'; '.join(parts)}. Criteria: "
            f"AEN's dead % at most {check['dead_ratio']:g}x a baseline's and at least 1 point lower; AEN's EV at "
            f"least the baseline's minus {check['ev_margin']:g}.")


def _unstable_cells(records: list[dict], spread: float = 10.0) -> str:
    """A sentence naming the (method, rho) cells whose seeds disagree on dead % by more than ``spread`` points."""
    cells = []
    for row in summarise(records, ("dead_pct",)):
        values = [r["dead_pct"] for r in records if r["method"] == row["method"] and r["rho"] == row["rho"]]
        if max(values) - min(values) > spread:
            cells.append(f"{row['label']} at rho = {row['rho']:g} (dead % per seed: "
                         + ", ".join(f"{v:.1f}" for v in values) + ")")
    if not cells:
        return f"Every cell's seeds agree on dead % within {spread:g} points."
    return (f"Seeds disagree on dead % by more than {spread:g} points in: {'; '.join(cells)}. A mean ± std hides "
            "such a split: some seeds collapsed and others did not.")


def report_markdown(records: list[dict], metadata: dict) -> str:
    """benchmarks/synthetic.md: the claim check, the table, and how the numbers were made."""
    size = metadata["sizes"]
    seeds = sorted({r["seed"] for r in records})
    adaptive = metadata["adaptive"]
    where = metadata["gpu"] or metadata["device"]
    return f"""# Synthetic starvation sweep

{claim_statement(claim_check(records))}

Mean ± standard deviation over seeds {seeds} of metrics on {size['eval_samples']} held-out samples with ground
truth. dead_pct: % of latents that never fire on the held-out set; l0: mean active latents per sample; ev:
explained variance; shrinkage: mean ||x_hat||_1 / ||x||_1; support_f1: F1 of the learned supports against the
true ones through a Hungarian atom matching; dict_recovery: fraction of true atoms whose matched learned atom has
cos >= 0.9; recovery_mean_cos: mean cosine of that matching. Column l1: the calibrated L1 coefficient (TopK uses
k = {size['k']} instead).

A note on dictionary recovery: for rho > 0 every true atom is sqrt(1 - rho) u_j + sqrt(rho) v with one shared spike v.
Each sample's spike content is the sum of its k magnitudes, which varies little around its mean, so an SAE can put
most of the spike into b_dec and learn atoms close to u_j, whose cosine with the true atom is about sqrt(1 - rho)
(0.84 at rho = 0.3). Recovery at cos >= 0.9 therefore drops to about 0 for rho >= 0.3 for every method, while
support F1 (which only needs the matching) stays informative.

{markdown_table(records)}

{_unstable_cells(records)}

## How it was run

- Command: `{metadata['command']}` ({'complete' if metadata.get('complete', True) else 'INCOMPLETE: the run stopped early'}; {metadata.get('wall_s', float('nan')):.0f} s wall clock).
- Device: {where}; {metadata['workers']} worker process(es); torch {metadata['torch']}, numpy {metadata['numpy']},
  scipy {metadata['scipy']}, Python {metadata['python']}; aen-mini {metadata['aen_mini_version']}
  ({f"commit {metadata['git_commit']}" if metadata['git_commit'] else 'commit unknown: run outside a git checkout'}).
- Data: `SpikedSource(n={size['n']}, m={size['m']}, k={size['k']}, rho, magnitude U{list(size['magnitude'])})`, no noise;
  a new dictionary per seed. Training batches come from a pool of {size['pool']} samples per (rho, seed), shared by
  every method; evaluation uses {size['eval_samples']} separate samples.
- SAE: d_sae = {size['d_sae']} (= m, the paper's setting); Adam lr {size['lr']}, linear decay over the last 20% of
  training, gradient clip 1, batch {size['batch_size']}, {size['steps']} steps
  ({size['steps'] * size['batch_size']:,} tokens) per run; b_dec initialised at the mean of the first batch.
- Calibration: for every method but TopK, at each rho, the L1 coefficient is searched on seed 0's data (expand by 4x
  until bracketed, then interpolate log L0 in log l1; at most {size['calib_trials']} runs of {size['calib_steps']} steps)
  for held-out L0 within 10% of k = {size['k']}, and the closest trial is used for every seed.
- Elastic net and AEN: l2 = {metadata['l2_ratio']['aen']} x l1. Adaptive lasso and AEN: gamma = {adaptive['gamma']},
  EMA beta = {adaptive['ema_beta']} (0.99 rather than the authors' 0.999 because runs are short), ref_pct =
  {adaptive['ref_pct']}, warm-up from {adaptive['warmup_start_frac']:.0%} of training, linear over
  {adaptive['warmup_frac']:.0%}.
- TopK: k = {size['k']}, AuxK with k_aux = n / 2 and coefficient 1/32. Resampling (Bricken et al.): every
  steps / 5 + 1 steps. A latent counts as dead for AuxK and resampling after {size['batch_size'] * max(1, size['steps'] // 20):,} tokens without firing.
- wall_s per record is measured inside a worker; with several workers sharing one GPU it includes contention.
"""
