"""The synthetic starvation benchmark (issue 2): every SAE family on spiked dictionaries across coherence rho.

    PYTHONPATH=. python3 benchmarks/synthetic.py --device cuda --size full --out benchmarks

writes benchmarks/synthetic.json (one record per method, rho and seed, saved after every record) and
benchmarks/synthetic.md (mean ± std table, how it was run, and whether the paper's claim is reproduced).
The logic lives in aen_mini/experiments/sweep.py; `python -m aen_mini.experiments.sweep --out book/results` is the same command.
"""
from aen_mini.experiments.sweep import main

if __name__ == "__main__":
    main(default_out="benchmarks", prog="benchmarks/synthetic.py")
