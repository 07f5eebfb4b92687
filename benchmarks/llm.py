"""SAEs on SmolLM2-135M-Instruct at matched L0, the paper's Pythia budget, one SAE at a time (issue 12).

The study lives in the package: ``aen_mini/experiments/llm_calibrated.py`` (the runs in priority order, the l1
calibration by probes, the records), ``llm_study.py`` (harvest, method settings, evaluation, the flags),
``llm_speed.py`` (the harvest's speed, ``--speed-only``), ``llm_report.py`` (the .md).

    # on a GPU machine (the GGUF and the pre-tokenised corpus travel with the command; see benchmarks/llm.md):
    python3 benchmarks/llm.py --gguf m.gguf --speed-only --out OUT                # harvest speed, random tokens
    python3 benchmarks/llm.py --gguf m.gguf --tokens-file english_tokens.safetensors --out OUT --budget-s 540
    python3 benchmarks/llm.py --gguf m.gguf --tokens-file ... --continue-from OUT/llm.json --out OUT2 --budget-s 200
    python3 benchmarks/llm.py --markdown benchmarks/llm.json     # the .md beside it, from the JSON (CPU)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aen_mini.experiments import llm_calibrated  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    llm_calibrated.main(argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
