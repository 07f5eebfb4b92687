"""The GPU benchmark's report: gpu.md's tables and the summary printed at the end (benchmarks/gpu.py)."""
from __future__ import annotations

from typing import Any

from aen_mini.experiments.report import markdown_table
from gpu_common import PAPER_TOKENS, TOLERANCE


# --- output --------------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1e6:
            return f"{v / 1e6:.2f}M"
        if abs(v) >= 1e3:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _row_line(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"{row.get('variant', '')} d={row.get('d')} m={row.get('m')} {row.get('impl')}: skipped: {row['skipped']}"
    return (f"{row['variant']:8s} d={row['d']:5d} m={row['m']:6d} {row['impl']:14s} {row['ms_per_step']:9.3f} ms "
            f"{row['tokens_per_s'] / 1e6:8.3f} Mtok/s {row['model_tflops']:7.1f} TFLOP/s (model) "
            f"peak {_fmt(row.get('peak_memory_gb'))} GB")


def numerics_rows(num: dict[str, Any]) -> list[list[Any]]:
    """The numerics table's rows: each variant's fp32, fast bf16 and second-seed fp32 runs (those that ran)."""
    rows = []
    for row in num["runs"]:
        for name in ("fp32", "fast_bf16", "fp32_seed1"):
            r = row.get(name, {})
            if "skipped" in r:
                rows.append([row["variant"], name, f"skipped: {r['skipped']}", "", "", ""])
            elif r:
                ok = row.get("within_tolerance") if name == "fast_bf16" else ""
                rows.append([row["variant"], name, _fmt(r["dead_pct"]), _fmt(r["l0"], 4), _fmt(r["ev"], 4), ok])
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = ["# GPU benchmark (issue 5)", "", "All figures below come from one run of `benchmarks/gpu.py`; method, FLOP "
             "and byte counts and the predictions they are compared with: `benchmarks/gpu_notes.md`.", ""]
    env = results.get("env", {})
    if env:
        lines += ["## Environment", "", *(f"- {k}: {v}" for k, v in env.items()), ""]
    roof = results.get("roofline")
    if roof:
        lines += ["## Matmul roofline", "", f"{roof.get('n')}^3 random matrices, median of CUDA-event timings:", "",
                  f"- bf16: **{_fmt(roof.get('bf16_tflops'), 4)} TFLOP/s** ({_fmt(roof.get('bf16_median_ms'))} ms)",
                  f"- fp32 (no TF32, as the plain path runs): {_fmt(roof.get('fp32_tflops'), 4)} TFLOP/s", ""]
    step = results.get("step")
    if step:
        lines += ["## SAE training step", "",
                  f"Batch {step['batch']}. *Model TFLOP/s* counts the plain implementation's FLOPs "
                  "(`aen_mini.run.planning.flop_per_token`): 12·d·m per token "
                  "for dense variants (6 matmuls of 2·d·m: encoder and decoder, each forward, input gradient, weight "
                  "gradient), 18·d·m for TopK (AuxK adds a decoder matmul and its two gradients). The fast step "
                  "executes 2·d·m fewer (no encoder input gradient). Fraction = model TFLOP/s / measured bf16 roofline.",
                  ""]
        header = ["variant", "d", "m", "impl", "ms/step", "tokens/s", "model TFLOP/s", "fraction of roofline",
                  "speed-up vs eager fp32", "peak GB", "note"]
        rows = [[r["variant"], r["d"], r["m"], r["impl"], *[""] * 6, f"skipped: {r['skipped']}"] if "skipped" in r else
                [r["variant"], r["d"], r["m"], r["impl"], _fmt(r["ms_per_step"]), _fmt(r["tokens_per_s"]),
                 _fmt(r["model_tflops"]), _fmt(r.get("fraction_of_roofline")), _fmt(r.get("speedup_vs_eager_fp32")),
                 _fmt(r.get("peak_memory_gb")), r["describe"]] for r in step["rows"]]
        lines += [markdown_table(header, rows), ""]
    abl = results.get("ablation")
    if abl:
        rows = [[r["impl"], "", "", "", f"skipped: {r['skipped']}"] if "skipped" in r else
                [r["impl"], _fmt(r["ms_per_step"]), _fmt(r["tokens_per_s"]), _fmt(r["model_tflops"]), r["describe"]]
                for r in abl["rows"]]
        lines += [f"## Ablation (AEN, d={abl['d']}, m={abl['m']})", "",
                  markdown_table(["impl", "ms/step", "tokens/s", "model TFLOP/s", "what"], rows), ""]
    num = results.get("numerics")
    if num:
        lines += [f"## Numerics: fast bf16 vs fp32 (d={num['d']}, m={num['m']}, {num['steps']} steps of {num['batch']})", "",
                  f"Synthetic spiked data on the device; held-out L0 and EV from an fp32 forward. Tolerance: "
                  f"|Δ dead| ≤ {TOLERANCE['dead_pct']} points, |Δ L0| ≤ {TOLERANCE['l0_rel']:.0%}, |Δ EV| ≤ {TOLERANCE['ev']}. "
                  "`fp32_seed1` (another SAE init) shows the run-to-run spread.", "",
                  markdown_table(["variant", "run", "dead %", "L0", "EV", "within tolerance"], numerics_rows(num)), ""]
    har = results.get("harvest")
    if har:
        lines += ["## Harvesting", "", f"Random-init stand-ins (random weights, random token ids; speed only), bf16, "
                  f"context {har['ctx_len']}, forward stopped after the hooked block, batches of {har['batch']} rows "
                  "from `LMActivationSource` (normalised, shuffle buffer).", "",
                  markdown_table(["model", "hook", "tokens/s", "peak GB", "path"], [
                      [name, "", "", "", f"skipped: {r['skipped']}"] if "skipped" in r else
                      [name, r["hook"], _fmt(r["tokens_per_s"]), _fmt(r["peak_memory_gb"]), r["path"]]
                      for name, r in har["models"].items()]), ""]
    e2e = results.get("e2e")
    if e2e:
        lines += ["## End to end: the paper's Pythia-70M configuration", ""]
        if "skipped" in e2e:
            lines += [f"skipped: {e2e['skipped']}", ""]
        else:
            lines += [f"AEN, {e2e['d_sae']} latents, {e2e['hook']}, batch {e2e['batch']}, on {e2e['model']} "
                      f"(random init: speed only; {e2e['model_path']}); harvest in a producer thread on its own CUDA "
                      "stream (`PrefetchSource`), training with `TrainConfig(fast=True, precision='bf16')`.", "",
                      f"- tokens trained: {e2e['tokens']:,} ({e2e['steps']} steps)",
                      f"- wall time: {_fmt(e2e['wall_s'])} s (model build {_fmt(e2e['build_s'])} s + training "
                      f"{_fmt(e2e['train_wall_s'])} s, compile and capture included)",
                      f"- tokens/s: {_fmt(e2e['tokens_per_s'])} overall, {_fmt(e2e['steady_tokens_per_s'])} steady state",
                      f"- peak GPU memory: {_fmt(e2e['peak_memory_gb'])} GB"]
            if "extrapolated_paper_wall_s" in e2e:
                lines.append(f"- **extrapolated** to the paper's {PAPER_TOKENS:,} tokens (this run trained fewer: "
                             f"`--e2e-tokens`): {_fmt(e2e['extrapolated_paper_wall_s'])} s = build + measured overhead + "
                             "tokens / steady tokens/s")
            lines.append("")
    errors = {k: v for k, v in results.items() if isinstance(v, dict) and "skipped" in v and k != "e2e"}
    if errors:
        lines += ["## Skipped sections", "", *(f"- {k}: {v['skipped']}" for k, v in errors.items()), ""]
    return "\n".join(lines)


def summary_table(results: dict[str, Any]) -> str:
    lines = []
    roof = results.get("roofline", {})
    if "bf16_tflops" in roof:
        lines.append(f"bf16 roofline {roof['bf16_tflops']:.0f} TFLOP/s")
    for r in results.get("step", {}).get("rows", []):
        if r.get("impl") == "fast" and "tokens_per_s" in r:
            lines.append(f"{r['variant']:8s} d={r['d']:5d} m={r['m']:6d} fast {r['tokens_per_s'] / 1e6:8.2f} Mtok/s "
                         f"{_fmt(r.get('fraction_of_roofline'))} of roofline, x{_fmt(r.get('speedup_vs_eager_fp32'))} vs eager fp32")
    for row in results.get("numerics", {}).get("runs", []):
        lines.append(f"numerics {row['variant']}: within tolerance = {row.get('within_tolerance')}")
    for name, r in results.get("harvest", {}).get("models", {}).items():
        lines.append(f"harvest {name}: " + (f"{r['tokens_per_s'] / 1e6:.2f} Mtok/s" if "tokens_per_s" in r else r.get("skipped", "")))
    e2e = results.get("e2e", {})
    if "wall_s" in e2e:
        lines.append(f"e2e {e2e['tokens']:,} tokens: {e2e['wall_s']:.0f} s" +
                     (f", extrapolated {PAPER_TOKENS:,}: {e2e['extrapolated_paper_wall_s']:.0f} s" if "extrapolated_paper_wall_s" in e2e else ""))
    elif "skipped" in e2e:
        lines.append(f"e2e skipped: {e2e['skipped']}")
    return "\n".join(lines)
