"""Chapter 3's two studies of ReLU + L1 with our initialisation disagree at rho = 0: the l1, the training data (fresh
batches or a reused pool) and the dead window, crossed on the controlled study's streams.

    PYTHONPATH=. python3 benchmarks/dead_window.py --size full --commit $(git rev-parse HEAD)

writes benchmarks/dead_window.json (every record, with device, versions, commit and command) and
benchmarks/dead_window.md. ``--size tiny --l1 a=0.1 b=0.2 --seeds 0`` runs the whole pipeline in seconds. The logic
lives in aen_mini/experiments/dead_window_study.py.
"""
from aen_mini.experiments.dead_window_study import main

if __name__ == "__main__":
    main()
