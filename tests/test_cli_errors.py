"""Adversarial input to the command line (issue 15): every case ends with exit status 2 and one line on stderr
that names the problem, never a traceback; and a property test that valid settings train while invalid ones are
refused that way."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aen_mini.run.cli import main, run_options
from aen_mini.run.cli_cases import SPIKED, adversarial_cases, run_cli
from aen_mini.data.source import TensorSource
from aen_mini.run.runs import RunConfig
from aen_mini.sae import make_sae
from aen_mini.train.loop import TrainConfig, train

CASE_NAMES = ["out is a file", "out under a file", "out read-only", "config is a folder", "TOML syntax error",
              "config not UTF-8", "JSON 42", '"normalize": "false"', '"out": 5', "--eval-contexts 0",
              "export without hook", "unknown flag abbreviation", "--device cuda on CPU-only torch"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_adversarial_input_ends_with_one_line_and_status_2(tmp_path, name):
    cases = adversarial_cases(tmp_path)
    if name not in cases:
        pytest.skip("this torch has CUDA: the CPU-only case cannot be tried here")
    argv, message = cases[name]
    done = run_cli(*argv, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert message in lines[0], lines[0]
    assert not (tmp_path / "e").exists() and not (tmp_path / "c").exists()  # nothing written


def test_disk_full_ends_with_one_line(tmp_path, capsys, monkeypatch):
    """ENOSPC while writing the results (as a full disk raises it): one line, status 2."""
    import aen_mini.io.atomic as atomic

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic, "atomic_write", full)
    monkeypatch.setattr("aen_mini.run.runs.atomic_write_text", lambda path, text: full(path, None))
    assert main([*SPIKED, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "config.json" in err[0]


def test_a_full_disk_while_writing_the_checkpoint_ends_with_one_line(tmp_path, capsys, monkeypatch):
    """safetensors reports ENOSPC as its own SafetensorError (found on a 64 KiB tmpfs by benchmarks/reliability.py)."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("aen_mini.io.atomic.save_file", full)
    assert main([*SPIKED, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "checkpoint.safetensors" in err[0]
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]  # no temporary left behind


def test_the_output_folder_is_checked_before_the_data_is_built(tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setattr("aen_mini.run.runs.build_data", lambda *a, **k: pytest.fail("built data for a run that cannot be written"))
    assert main(["train", "--out", str(tmp_path / "a-file"), "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_low_precision_weights_and_float64_fast_are_refused_naming_the_cause():
    """Today an fp16 SAE trains into a NaN loss whose message blames the learning rate."""
    source = TensorSource(torch.randn(64, 4))
    cfg = TrainConfig(steps=2, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="weights are float16: training keeps float32 master weights"):
        train(make_sae("relu_l1", 4, 8).half(), source, cfg)
    with pytest.raises(ValueError, match="fast=True trains float32 weights .* the SAE is float64"):
        train(make_sae("relu_l1", 4, 8).double(), source, TrainConfig(steps=2, batch_size=16, progress=False, fast=True))


def test_every_flag_has_help_and_its_default_and_help_shows_offline_examples(capsys):
    options = run_options()
    assert all(text and default is not None for _, _, text, default in options)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--data.model spiked" in text and "Offline examples" in text
    for flag in ("--batch-size", "--eval-contexts", "--target-l0", "--normalize", "--train.adam-betas", "--sae.aux-k"):
        assert flag in text
    assert text.count("(default") >= len(options)


def test_flat_config_files_still_load(tmp_path):
    flat = tmp_path / "run.json"
    flat.write_text(json.dumps({"model": "spiked", "sae": "topk", "k": 4, "latents": 32, "tokens": "2k", "batch_size": 500}))
    assert RunConfig.from_file(flat).k == 4
    toml = tmp_path / "run.toml"
    toml.write_text('model = "spiked"\nsae = "aen"\nl1 = 0.5\nnormalize = false\n')
    assert RunConfig.from_file(toml).normalize is False


# --- property: valid settings train, invalid ones are refused in one line ------------------------------------------
VALID = {"latents": st.integers(4, 24), "batch_size": st.sampled_from([64, 128]), "lr": st.sampled_from([1e-3, 4e-3]),
         "sae": st.sampled_from(["relu_l1", "aen", "topk"]), "seed": st.integers(0, 3), "normalize": st.booleans(),
         "eval_contexts": st.integers(1, 4), "grad_clip": st.sampled_from([0.0, 1.0])}
INVALID = {"latents": st.sampled_from([0, -3, 2.5, "8", True]), "batch_size": st.sampled_from([0, 1.5, None, "64"]),
           "lr": st.sampled_from([0, -1.0, 2.0, float("nan"), "fast"]), "sae": st.sampled_from(["gated", "", 3]),
           "seed": st.sampled_from([-1, 0.5, "0"]), "normalize": st.sampled_from(["false", 0, 1, "yes"]),
           "eval_contexts": st.sampled_from([0, -1, 1.0]), "grad_clip": st.sampled_from([-1.0, float("inf"), "1"])}


@st.composite
def run_settings(draw):
    bad = draw(st.sets(st.sampled_from(sorted(VALID)), max_size=2))
    values = {name: draw(INVALID[name] if name in bad else VALID[name]) for name in VALID}
    return values, bad


@settings(max_examples=int(os.environ.get("AEN_HYPOTHESIS_EXAMPLES", 12)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_settings())
@example(({"latents": 8, "batch_size": 64, "lr": 1e-3, "sae": "aen", "seed": 0, "normalize": True, "eval_contexts": 1,
           "grad_clip": 1.0}, set()))  # both outcomes are always tried
@example(({"latents": 8, "batch_size": 64, "lr": 1e-3, "sae": "aen", "seed": 0, "normalize": "false",
           "eval_contexts": 1, "grad_clip": 1.0}, {"normalize"}))
def test_valid_settings_train_and_invalid_ones_are_refused(tmp_path_factory, capsys, spec):
    values, bad = spec
    folder = tmp_path_factory.mktemp("prop")
    config = folder / "run.json"
    config.write_text(json.dumps({**values, "model": "spiked", "tokens": 512, "out": str(folder / "run"),
                                  "progress": False}, allow_nan=True))
    code = main(["train", "--config", str(config)])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if not line.startswith("warning: ")]
    if bad:
        assert code == 2 and len(errors) == 1 and errors[0].startswith("error: "), (values, bad, err)
        assert any(name in errors[0] for name in bad) or "variant" in errors[0], (bad, errors)
        assert not (folder / "run").exists()
    else:
        assert code == 0 and not errors, (values, err)
        metrics = json.loads((folder / "run" / "metrics.json").read_text())
        assert metrics["steps"] == 512 // values["batch_size"] and metrics["held_out"]["l0"] >= 0
