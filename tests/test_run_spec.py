"""The typed run spec (aen_mini.run.spec) and the command line generated from it: nested flags for every setting
(every TrainConfig option and every variant's hyperparameters), flat files and flags of earlier versions mapped,
unknown keys named."""
from __future__ import annotations

import json

import pytest

from aen_mini.io.checkpoint import load_checkpoint
from aen_mini.run.cli import main, run_options
from aen_mini.run.spec import FLAT_KEYS, RunConfig, RunSpec

SPIKED = ["train", "--data.model", "spiked", "--sae.latents", "16", "--tokens", "1024", "--train.batch-size", "256",
          "--no-train.progress"]


def test_nested_flags_reach_the_trainer_and_the_sae(tmp_path):
    out = tmp_path / "run"
    assert main([*SPIKED, "--sae.variant", "topk", "--sae.k", "4", "--sae.aux-k", "6", "--train.adam-betas", "0.8",
                 "0.99", "--train.resample-every", "2", "--no-train.init-b-dec", "--no-train.compile",
                 "--train.lr", "0.002", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["sae"] == {"variant": "topk", "latents": 16, "hyperparameters": {"k": 4, "aux_k": 6}}
    assert config["sae_config"]["aux_k"] == 6 and config["train"]["adam_betas"] == [0.8, 0.99]
    saved = load_checkpoint(out / "checkpoint.safetensors").train_state["train_config"]
    assert saved["adam_betas"] == [0.8, 0.99] and saved["resample_every"] == 2 and saved["init_b_dec"] is False
    assert saved["compile"] is False and saved["lr"] == 0.002 and saved["steps"] == 4
    # the folder's config.json is a --config: resuming it is accepted
    assert main(["train", "--config", str(out / "config.json"), "--resume"]) == 0


def test_every_trainer_option_and_every_hyperparameter_has_a_flag():
    names = {name for name, *_ in run_options()}
    for option in ("train.aux_k", "train.threshold_momentum"):  # hyperparameters live under sae., not train.
        assert option not in names
    for option in ("sae.aux_k", "sae.threshold_momentum", "sae.w_max", "sae.loss_scale", "train.resample_every",
                   "train.adam_betas", "train.compile", "train.init_b_dec", "train.init", "train.l1_warmup_steps",
                   "train.precision", "train.fast", "parallel.mode", "data.corpus"):
        assert option in names, option
    assert all(dotted in names for dotted in FLAT_KEYS.values() if dotted != "extra")


def test_one_run_in_three_spellings_is_one_spec():
    flat = RunSpec.from_dict({"model": "spiked", "sae": "aen", "l1": 0.5, "lr": 0.002, "parallel": "latent"})
    dotted = RunSpec.from_dict({"data.model": "spiked", "sae.variant": "aen", "sae.l1_coeff": 0.5, "train.lr": 0.002,
                                "parallel.mode": "latent"})
    nested = RunSpec.from_dict({"data": {"model": "spiked"}, "sae": {"variant": "aen", "hyperparameters":
                                                                     {"l1_coeff": 0.5}},
                                "train": {"lr": 0.002}, "parallel": {"mode": "latent"}})
    assert flat == dotted == nested == RunSpec.from_dict(nested.to_dict())
    assert RunConfig(model="spiked", sae="aen", l1=0.5, lr=0.002, parallel="latent").to_spec() == flat
    assert nested.updated(lr=0.003).train.lr == nested.updated(**{"train.lr": 0.003}).train.lr == 0.003


@pytest.mark.parametrize("values,message", [
    ({"train.lambda": 1}, r"unknown run setting\(s\) \['train.lambda'\]"),
    ({"sae": "relu_l1", "sae.k": 4}, r"relu_l1 SAE has no hyperparameter\(s\) \['k'\]"),
    ({"sae": "topk", "sae.aux_k": -1}, "aux_k"),
    ({"train": {"adam_betas": [0.9, 1.5]}}, "adam_betas"),
    ({"train": 3}, "train must be a table"),
])
def test_bad_settings_name_the_setting(values, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RunSpec.from_dict(values)
