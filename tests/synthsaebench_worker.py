"""Runs inside the sae-lens venv (.venv-saelens): checks that scoring our SAE through benchmarks/synthsaebench.py's
SAELensView gives what SAELens gives for the same SAE exported (aen_mini.io.saelens) and loaded as SAELens's own SAE.

    python synthsaebench_worker.py OUT.json

Trains a ReLU + L1 and a BatchTopK SAE briefly on a tiny SynthSAEBench-configured model, scores each both ways on
the same samples with SAELens's eval_sae_on_synthetic_data, and writes both results to OUT.json.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import synthsaebench as bench  # noqa: E402 (puts the repo root on the path too)
from sae_lens import SAE  # noqa: E402

from aen_mini.io.saelens import export_to_saelens  # noqa: E402


def main(out: str) -> None:
    sl = bench.saelens_synthetic.load()
    size = bench.SIZES["tiny"]
    model = sl.SyntheticModel(bench.model_config(sl, size))
    args = argparse.Namespace(batch_size=64, lr=3e-3, seed=0, device="cpu", eval_samples=2048)
    pool = bench.draw(model, 300 * 64, seed=0)
    results = {}
    for method in ("relu_l1", "batch_topk"):
        sae, _ = bench.train_one(method, size, pool, 2.0, 300, args)
        ours = bench.score(sl, model, sae, args)
        with tempfile.TemporaryDirectory() as folder:
            export_to_saelens(sae, Path(folder) / "sae")
            theirs_sae = SAE.load_from_disk(str(Path(folder) / "sae"), device="cpu")
        torch.manual_seed(args.seed + 10_000)  # the samples bench.score draws
        theirs = sl.eval_sae_on_synthetic_data(theirs_sae, model.feature_dict, model.activation_generator,
                                               num_samples=args.eval_samples, batch_size=2048).to_dict()
        results[method] = {"ours": ours, "saelens": theirs}
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
