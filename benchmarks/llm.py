"""SAEs on SmolLM2-135M-Instruct at matched L0, one SAE at a time with an l1 search (issue 12).

Its 20.48M-token runs chose the l1 that ``benchmarks/llm_grid.py`` reuses; the runs of record of chapters 5 and 6
(``benchmarks/llm.json`` today) are llm_grid.py's, which trains every SAE of a family at once on one harvest.
The study lives in the package: ``aen_mini/experiments/llm_study.py`` (harvest, method settings, evaluation, the
protocol in its docstring, the flags of both scripts), ``llm_calibrated.py`` (this run), ``llm_report.py`` (the .md).

    # on a GPU machine (the GGUF and the pre-tokenised corpus travel with the command; see benchmarks/llm.md):
    python3 benchmarks/llm.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --tokens-file english_tokens.safetensors \\
        --device cuda --out OUT --budget-s 420
    python3 benchmarks/llm.py --markdown benchmarks/llm.json     # the .md beside it, from the JSON (CPU)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")  # before torch is imported: the step runs eager in one CUDA graph
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aen_mini.experiments import llm_calibrated  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    llm_calibrated.main(argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
