"""The LLM study's Markdown (issue 12): one writer for both result shapes, the calibrated run's
(``benchmarks/llm.py``) and the grid run's (``benchmarks/llm_grid.py``: its metadata has a ``plan``), tables through
:func:`aen_mini.experiments.report.markdown_table`.

    python3 benchmarks/llm_grid.py --markdown benchmarks/llm.json    # the .md beside a JSON file (CPU)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aen_mini.experiments.llm_study import LABELS
from aen_mini.experiments.report import markdown_table
from aen_mini.io.atomic import atomic_write_text

__all__ = ["markdown", "write_markdown"]


def _f(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _step_ms(rows: list[dict[str, Any]], key: str, value: str, steps: int | None = None) -> float:
    """Mean ms per step of the rows whose ``key`` is ``value``; with ``steps``, the seconds that many steps take."""
    picked = [r["step_ms"] for r in rows if r[key] == value]
    if steps is None:
        return sum(picked) / max(1, len(picked))
    return steps * sum(picked) / 1000 / max(1, len(picked))  # this order of operations: the committed .md files


def _header(meta: dict[str, Any], title: str, each_sae: str) -> list[str]:
    return [title, "",
            f"Model: {meta['model_label']}; hook `{meta['hook']}`; d_in {meta['d_in']}, d_sae {meta['latents']}. "
            f"Data: {meta['corpus']}. Device: {meta['device_name']}; torch {meta['torch']}, transformers "
            f"{meta['transformers']}; aen-mini {meta['aen_mini_version']}, commit {str(meta['git_commit'])[:10]}.", "",
            f"Command: `{meta['command']}`", "", each_sae, ""]


def _table(rows: list[dict[str, Any]], within: str, dead: str) -> list[str]:
    """The CE line and the results table (``within``: the L0 column's header; ``dead``: the dead % format)."""
    if not rows:
        return []
    header = ["method", "target L0", "seed", "l1 / k", "L0", within, "dead % (held-out)", "dead % (whole corpus)", "EV",
              "CE spliced", "ΔCE", "KL", "CE rec. (zero)", "CE rec. (mean)"]
    cells = [[r["label"], r["target_l0"], r["seed"], _f(r["l1"], ".3g") if r["l1"] is not None else f"k={r['k']}",
              f"{r['l0']:.1f}", "yes" if r["calibration_converged"] else "**no**", format(r["dead_pct"], dead),
              format(r["dead_pct_corpus"], dead), f"{r['ev']:.3f}", f"{r['ce_spliced']:.3f}", f"{r['delta_ce']:.3f}",
              f"{r['kl']:.3f}", _f(r["ce_recovered_zero"]), _f(r["ce_recovered_mean"])] for r in rows]
    return [f"Clean CE {rows[0]['ce_clean']:.3f} nats; zero-ablated {rows[0]['ce_zero']:.3f}; mean-ablated "
            f"{rows[0]['ce_mean']:.3f}.", "", markdown_table(header, cells)]


def _cut(meta: dict[str, Any]) -> list[str]:
    return ["", "## Cut", ""] + ([f"- {c}" for c in meta.get("cut", [])] or ["- nothing within the run's budget"])


def _calibrated(meta: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """benchmarks/llm.py's result: one SAE at a time, l1 searched."""
    lines = _header(meta, "# SAEs on SmolLM2-135M-Instruct at matched L0 (GPU runs of record)",
                    f"Each SAE: {meta['tokens_per_sae']:,} training tokens (batch {meta['batch_size']}, lr {meta['lr']:g}) "
                    f"drawn from {meta['harvest_tokens']:,} distinct training tokens, i.e. "
                    f"{meta['tokens_per_sae'] / meta['harvest_tokens']:.1f} passes. Dead % and L0/EV over the "
                    f"{meta['heldout_tokens']:,} held-out tokens; spliced numbers over {meta['splice_positions']:,} "
                    "held-out positions. Same init, schedule and options for every method (see the script's docstring).")
    lines += _table(rows, "calibrated", ".1f")
    lines += ["", "## Speed", "",
              f"- model load (GGUF dequantised on the machine): {meta['model_load_s']:.1f} s",
              f"- harvest (float32, eager, up to block 15): {meta['harvest_tokens']:,} tokens in {meta['harvest_s']:.1f} s = "
              f"{meta['harvest_tokens_per_s']:,.0f} tokens/s",
              f"- SAE step (d_sae {meta['latents']}, batch {meta['batch_size']}): " + ", ".join(
                  f"{LABELS[m]} {_step_ms(rows, 'method', m):.2f} ms" for m in dict.fromkeys(r["method"] for r in rows)),
              f"- end to end per SAE (load + harvest shared over {len(rows)} SAEs, calibration runs, evaluation): "
              f"{meta.get('end_to_end_per_sae_s', float('nan')):.1f} s; whole run {meta['wall_s']:.0f} s"]
    return lines + _cut(meta)


def _grid(meta: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """benchmarks/llm_grid.py's result: every SAE of a family at once, l1 reused, the planned budget."""
    lines = _header(meta, f"# SAEs on SmolLM2-135M-Instruct at matched L0 (GPU runs of record, {meta['latents']} latents)",
                    f"Each SAE: {meta['tokens_per_sae']:,} training tokens (batch {meta['batch_size']}, lr {meta['lr']:g}), "
                    f"random batches from {meta['harvest_tokens']:,} distinct training tokens: "
                    f"{meta['tokens_per_sae'] / meta['harvest_tokens']:.1f} passes. Plan: {meta['plan']['why']}. Dead %, L0 "
                    f"and EV over the {meta['heldout_tokens']:,} held-out tokens (never trained on); spliced numbers over "
                    f"{meta['splice_positions']:,} held-out positions. Same init, schedule and options for every method "
                    "(see the script's docstring); l1 reused from the 20.48M-token calibration, drift flagged.")
    lines += _table(rows, "within 15 %", ".2f")
    grids = {r["grid_size"]: r for r in rows}
    labels = list(dict.fromkeys(r["label"] for r in rows))
    max_steps = meta["plan"]["max_steps"]
    lines += ["", "## Speed", "",
              f"- model load (GGUF dequantised on the machine): {meta['model_load_s']:.1f} s",
              f"- harvest (float32 with TF32 matmuls, eager, up to block 15): {meta['harvest_tokens']:,} tokens in "
              f"{meta['harvest_s']:.1f} s = {meta['harvest_tokens_per_s']:,.0f} tokens/s",
              "- SAE step, per SAE (grid wall time / steps / SAEs in the grid): " + ", ".join(
                  f"{lab} {_step_ms(rows, 'label', lab):.3f} ms" for lab in labels),
              "- grids: " + "; ".join(f"{r['grid_size']} SAEs, {r['grid_wall_s']:.1f} s for {r['steps']:,} steps"
                                      for r in grids.values()),
              f"- end to end per SAE ({meta.get('end_to_end_note', '')}): {meta.get('end_to_end_per_sae_s', float('nan')):.1f} s;"
              f" whole run {meta['wall_s']:.0f} s",
              f"- projected at the paper's {max_steps * meta['batch_size']:,} tokens per SAE (SAE steps only, at "
              "the step times above; the target is 90 s end to end): " + ", ".join(
                  f"{lab} {_step_ms(rows, 'label', lab, steps=max_steps):.0f} s" for lab in labels)]
    lines += [f"- {meta[k]}" for k in ("heldout_note", "code_note", "device_seconds_used") if meta.get(k)]
    return lines + _cut(meta)


def markdown(result: dict[str, Any]) -> str:
    """The .md of an llm.json / llm_32x.json, whichever run wrote it."""
    meta, rows = result["metadata"], result["rows"]
    return "\n".join(_grid(meta, rows) if "plan" in meta else _calibrated(meta, rows)) + "\n"


def write_markdown(path: Path) -> Path:
    """Write the .md beside a result file from the JSON alone."""
    return atomic_write_text(path.with_suffix(".md"), markdown(json.loads(path.read_text())))
