"""SAEs on SmolLM2-135M-Instruct at the paper's Pythia budget: many SAEs trained at once on one harvest (issue 12).

The study lives in the package: ``aen_mini/experiments/llm_grid_study.py`` (the grids, the plan, the records; the
protocol in its docstring), ``llm_study.py`` (harvest, method settings, evaluation, the flags of both scripts),
``llm_report.py`` (the .md).

    # on a GPU machine (the GGUF and the pre-tokenised corpus travel with the command; see benchmarks/llm.md):
    python3 benchmarks/llm_grid.py --gguf m.gguf --tokens-file english_tokens.safetensors --out OUT --budget-s 470
    python3 benchmarks/llm_grid.py --markdown benchmarks/llm.json    # the .md beside it, from the JSON (CPU)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # before torch is imported, as benchmarks/llm.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aen_mini.experiments import llm_grid_study  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    llm_grid_study.main(argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
