"""Issue 11, section 2: the controlled study's one untried option, dead-latent resampling, at CPU scale.

    PYTHONPATH=. python3 benchmarks/replication_resample.py --size cpu --commit $(git rev-parse HEAD)

writes benchmarks/replication_resample.json (every record, with device, versions, commit and command) and
benchmarks/replication_resample.md. ``--size tiny`` runs the whole pipeline in seconds. The logic lives in
aen_mini/experiments/resample_study.py.
"""
from aen_mini.experiments.resample_study import main

if __name__ == "__main__":
    main(prog="benchmarks/replication_resample.py")
