"""The LLM study's Markdown (issue 12): results per dictionary size, the calibration of each run, the speed (with
``llm_speed.json`` beside the results, the harvest settings compared), tables through
:func:`aen_mini.experiments.report.markdown_table`.

    python3 benchmarks/llm.py --markdown benchmarks/llm.json    # the .md beside a JSON file (CPU)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aen_mini.experiments.report import markdown_table
from aen_mini.io.atomic import atomic_write_text

__all__ = ["markdown", "write_markdown"]


def _f(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def _header(meta: dict[str, Any], title: str, each_sae: str) -> list[str]:
    return [title, "",
            f"Model: {meta['model_label']}; hook `{meta['hook']}`; d_in {meta['d_in']}. "
            f"Data: {meta['corpus']}. Device: {meta['device_name']}; torch {meta['torch']}, transformers "
            f"{meta['transformers']}; aen-mini {meta['aen_mini_version']}, commit {str(meta['git_commit'])[:10]}.", "",
            f"Command: `{meta['command']}`", "", each_sae, ""]


def _table(rows: list[dict[str, Any]], within: str, dead: str) -> list[str]:
    """The CE line and the results table (``within``: the L0 column's header; ``dead``: the dead % format)."""
    if not rows:
        return []
    header = ["method", "latents", "target L0", "seed", "l1 / k", "L0", within, "dead % (held-out)", "dead % (whole corpus)", "EV",
              "CE spliced", "ΔCE", "KL", "CE rec. (zero)", "CE rec. (mean)"]
    cells = [[r["label"], r["d_sae"], r["target_l0"], r["seed"], _f(r["l1"], ".3g") if r["l1"] is not None else f"k={r['k']}",
              f"{r['l0']:.1f}", "yes" if r["calibration_converged"] else "**no**", format(r["dead_pct"], dead),
              format(r["dead_pct_corpus"], dead), f"{r['ev']:.3f}", f"{r['ce_spliced']:.3f}", f"{r['delta_ce']:.3f}",
              f"{r['kl']:.3f}", _f(r["ce_recovered_zero"]), _f(r["ce_recovered_mean"])] for r in rows]
    return [f"Clean CE {rows[0]['ce_clean']:.3f} nats; zero-ablated {rows[0]['ce_zero']:.3f}; mean-ablated "
            f"{rows[0]['ce_mean']:.3f}.", "", markdown_table(header, cells)]


def _not_run(meta: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The study's planned runs that no call made, then the runs a call was asked for (``--jobs``) and cut for want of
    budget that no later call made (a cut's key is its first word, ``METHOD:TARGET:SEED:LATENTS``)."""
    made = {f"{r['method']}:{r['target_l0']}:{r['seed']}:{r['d_sae']}" for r in rows}
    cut = [c for call in [*meta.get("earlier_calls", []), meta] for c in call.get("cut") or []
           if c.split(" ", 1)[0] not in made]
    lines = [f"- {key}" for key in meta["not_run"]] + [f"- {c}: asked for by a call, cut by its budget, not run by a later call" for c in cut]
    return ["", "## Not run (did not fit the device-time budget)", ""] + (lines or ["- nothing"])


def _calibration(rows: list[dict[str, Any]]) -> list[str]:
    """How each ReLU+L1 / AEN run's l1 was found: probes, the drift predicted to the full length, the outcome."""
    cal = [r for r in rows if r["l1"] is not None]
    if not cal:
        return []
    cells = [[r["label"], r["d_sae"], r["target_l0"], r["seed"], len(r["calibration_trials"]),
              "; ".join(f"{t['l1']:.3g}→{t['l0']:.1f} ({t['steps']})" for t in r["calibration_trials"]) or "–",
              _f(r.get("predicted_drift"), ".2f"), _f(r.get("actual_drift"), ".2f"), _f(r["l1"], ".3g"), f"{r['l0']:.1f}",
              "yes" if r["calibration_converged"] else "**no**", f"{r['calibration_wall_s']:.0f}"] for r in cal]
    return ["", "## Calibration", "",
            "Probes (l1 → held-out L0 on 1M tokens, steps) with the full run's schedule shape. Drift: the full run's L0 "
            "over the probes' L0 at the same l1; predicted from one doubling of the probe length (at the larger "
            "dictionary: the smaller one's actual drift), actual from the full run. Seeds after the first reuse the "
            "first seed's l1 moved by its full-run L0.", "",
            markdown_table(["method", "latents", "target", "seed", "probes", "trials", "predicted drift", "actual drift", "l1 (full run)",
                            "L0 (full run)", "within tolerance", "seconds"], cells)]


def _speed(meta: dict[str, Any], rows: list[dict[str, Any]], speed: dict[str, Any] | None) -> list[str]:
    lines = ["", "## Speed", "",
             f"- model load (the dequantised model from the machine's cache, float32"
             f"{'' if meta['harvest_dtype'] == 'fp32' else ' and a ' + meta['harvest_dtype'] + ' copy for the harvest'}): "
             f"{meta['model_load_s']:.1f} s",
             f"- harvest ({meta['harvest_dtype']}, eager, up to block 15): {meta['harvest_tokens']:,} training tokens in "
             f"{meta['harvest_s']:.1f} s = {meta['harvest_tokens_per_s']:,.0f} tokens/s (the held-out split after it)"]
    if speed:
        h = speed["harvest"]
        compiled = (f"{h['compiled_bf16']:,.0f} tokens/s after {h['compile_s']:.1f} s of compilation"
                    if h.get("compiled_bf16") else f"failed ({h.get('compile_error')})")
        lines.append(f"- harvest settings on {h['tokens_timed']:,} random tokens (`llm_speed.json`, "
                     f"{speed['metadata']['device_name']}): eager float32 with TF32 {h['eager_fp32_tf32']:,.0f} tokens/s, "
                     f"eager bf16 {h['eager_bf16']:,.0f}, compiled bf16 {compiled}")
    sizes = sorted({r["d_sae"] for r in rows})
    for d in sizes:
        at = [r for r in rows if r["d_sae"] == d]
        lines.append(f"- SAE step at {d} latents (batch {meta['batch_size']}; steady state, compile and capture "
                     "excluded): " + ", ".join(f"{lab} {_mean([r['step_ms'] for r in at if r['label'] == lab]):.3f} ms"
                                               for lab in dict.fromkeys(r["label"] for r in at)))
        lines.append(f"- one SAE of {meta['steps'] * meta['batch_size']:,} tokens at {d} latents, training wall time "
                     "incl. compile: " + ", ".join(f"{lab} {_mean([r['train_wall_s'] for r in at if r['label'] == lab]):.1f} s"
                                                   for lab in dict.fromkeys(r["label"] for r in at)))
    lines.append(f"- end to end per SAE, measured (this call's wall time, model load and harvest included, / the "
                 f"{meta['n_sae']} SAEs it trained, calibration probes and evaluation included): "
                 f"{meta['end_to_end_per_sae_s']:.1f} s; this call {meta['wall_s']:.0f} s")
    calls = meta.get("earlier_calls", [])
    for call in calls:
        lines.append(f"- an earlier call (`{call['command']}`): {call['n_sae']} SAEs in {call['wall_s']:.0f} s")
        lines += [f"  - {call[k]}" for k in ("code_note", "device_seconds_used") if call.get(k)]
    if calls:
        wall, n = meta["wall_s"] + sum(c["wall_s"] for c in calls), meta["n_sae"] + sum(c["n_sae"] for c in calls)
        lines.append(f"- the {len(calls) + 1} study calls together: {n} SAEs in {wall:.0f} s = {wall / n:.1f} s per SAE end to end")
    lines += [f"- {meta[k]}" for k in ("code_note", "device_seconds_used") if meta.get(k)]
    return lines


def markdown(result: dict[str, Any], speed: dict[str, Any] | None = None) -> str:
    """The .md of an llm.json (``speed``: the llm_speed.json beside it, if any)."""
    meta, rows = result["metadata"], result["rows"]
    lines = _header(meta, "# SAEs on SmolLM2-135M-Instruct at matched L0 (GPU runs of record)",
                    f"Each SAE: {meta['steps'] * meta['batch_size']:,} training tokens (batch {meta['batch_size']}, lr "
                    f"{meta['lr']:g}{'; the paper' + chr(39) + 's Pythia budget' if meta['steps'] * meta['batch_size'] == 204_800_000 else ''}), random batches drawn on the device from "
                    f"{meta['harvest_tokens']:,} distinct training tokens: "
                    f"{meta['steps'] * meta['batch_size'] / meta['harvest_tokens']:.1f} passes. Dead %, L0 and EV over "
                    f"the {meta['heldout_tokens']:,} held-out tokens (never trained on); spliced numbers over "
                    f"{meta.get('splice_positions') or 0:,} held-out positions, each token's reconstruction multiplied back by "
                    "that token's own norm (per-token rescaling: the splice restores every norm exactly, which flatters "
                    f"the SAE next to one dataset-wide scale). Trainer: {meta['trainer']}. Same init, "
                    "schedule and options for every method (`aen_mini/experiments/llm_study.py`).")
    for d in sorted({r["d_sae"] for r in rows}):
        lines += [f"## {d} latents", ""] + _table([r for r in rows if r["d_sae"] == d], "within tolerance", ".2f") + [""]
    lines += _calibration(rows) + _speed(meta, rows, speed) + _not_run(meta, rows)
    return "\n".join(lines) + "\n"


def write_markdown(path: Path) -> Path:
    """Write the .md beside a result file from the JSON alone (and llm_speed.json beside it, if any)."""
    speed_file = path.with_name("llm_speed.json")
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else None
    return atomic_write_text(path.with_suffix(".md"), markdown(json.loads(path.read_text()), speed))
