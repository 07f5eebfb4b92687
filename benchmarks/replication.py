"""Issue 11: the authors' spiked protocol reproduced and the controlled study, as batched GPU jobs.

    PYTHONPATH=. python3 benchmarks/replication.py --device cuda --size full --out benchmarks

writes benchmarks/replication.json (every record, with device, versions, commit and command) and
benchmarks/replication.md. ``--size tiny --device cpu`` runs the whole pipeline in seconds. The logic lives in
aen_mini/experiments/replication_run.py.
"""
from aen_mini.experiments.replication_run import main

if __name__ == "__main__":
    main(default_out="benchmarks", prog="benchmarks/replication.py")
