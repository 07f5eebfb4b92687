"""train_tiny_lm at smoke size: its folder loads as the tiny-neox model and its loss falls on repeated text."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from aen_mini.lm import models
from aen_mini.lm.tiny_lm import train_tiny_lm

torch.set_num_threads(1)

CORPUS = ["def add(a, b):\n    return a + b\n", "class Stack:\n    def push(self, item):\n        self.items.append(item)\n"] * 20


def test_smoke_training_writes_a_loadable_model(tmp_path, monkeypatch):
    record = train_tiny_lm(tmp_path, steps=20, corpus=CORPUS, ctx_len=16, batch_size=8, lr=3e-3, eval_every=10)
    saved = json.loads((tmp_path / "training.json").read_text())
    assert saved["val_curve"] == [list(p) for p in record["val_curve"]] and len(record["val_curve"]) == 2
    assert record["val_curve"][-1][1] < record["val_curve"][0][1] < 8.5  # learns the repeated snippets
    monkeypatch.setattr(models, "TINY_NEOX_DIR", tmp_path)
    m = models.load_model("tiny-neox")
    assert m.d_model == 256 and m.context_format.prefix_id == 0 and m.context_format.pad_id == 1
