"""SAELens export/import: the real sae-lens package (in its own venv, .venv-saelens, made by `make saelens-venv`)
loads our exports and computes the same codes and reconstructions; SAELens-written SAEs import back."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aen_mini.data.source import TensorSource
from aen_mini.sae import VARIANTS, make_sae
from aen_mini.io.saelens import (ARCHITECTURE_OF_VARIANT, CFG_FILENAME, WEIGHTS_FILENAME, export_to_saelens,
                              import_from_saelens, read_saelens_config)
from aen_mini.train.loop import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("saelens_worker.py")
SAELENS_PYTHON = Path(os.environ.get("AEN_SAELENS_PYTHON", REPO / ".venv-saelens" / "bin" / "python"))
D_IN, D_SAE = 12, 40  # the worker makes SAELens SAEs of this size
HYPERPARAMETERS = {"topk": {"k": 5}, "batch_topk": {"k": 5}, "aen": {"warmup_steps": 5}}


def _saelens_python() -> Path:
    """The sae-lens venv's interpreter, or a skip saying why there is none."""
    if not SAELENS_PYTHON.is_file():
        pytest.skip(f"sae-lens is not installed: {SAELENS_PYTHON} is missing (`make saelens-venv` creates it; "
                    "it is skipped only where sae-lens cannot be installed)")
    # find_spec, not import: importing sae_lens takes seconds, and the worker does that once anyway
    probe = subprocess.run([str(SAELENS_PYTHON), "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('sae_lens') is None)"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"sae-lens is not installed in {SAELENS_PYTHON} (`make saelens-venv` installs it)")
    return SAELENS_PYTHON


def _trained(variant: str, x: torch.Tensor):
    sae = make_sae(variant, D_IN, D_SAE, seed=1, **HYPERPARAMETERS.get(variant, {}))
    train(sae, TensorSource(x, seed=0), TrainConfig(steps=30, batch_size=32, lr=1e-2, log_every=30, progress=False))
    return sae.eval()


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    """Every variant trained briefly and exported, plus SAELens-made SAEs; all run through sae-lens once."""
    python = _saelens_python()
    tmp = tmp_path_factory.mktemp("saelens")
    x = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(0)) * 2 + 0.5
    save_file({"x": x}, tmp / "x.safetensors")
    ours, jobs = {}, []
    for variant in VARIANTS:
        ours[variant] = _trained(variant, x)
        export_to_saelens(ours[variant], tmp / variant, model_name="toy", hook_name="blocks.0.hook_resid_post")
        jobs.append({"make": None, "folder": str(tmp / variant), "inputs": str(tmp / "x.safetensors"),
                     "out": str(tmp / f"{variant}.out.safetensors")})
    export_to_saelens(ours["aen"], tmp / "aen_rescaled", normalize_activations="constant_norm_rescale")
    jobs.append({"make": None, "folder": str(tmp / "aen_rescaled"), "inputs": str(tmp / "x.safetensors"),
                 "out": str(tmp / "aen_rescaled.out.safetensors")})
    for architecture in ("standard", "topk", "jumprelu"):
        jobs.append({"make": architecture, "folder": str(tmp / f"made_{architecture}"),
                     "inputs": str(tmp / "x.safetensors"), "out": str(tmp / f"made_{architecture}.out.safetensors")})
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    run = subprocess.run([str(python), str(WORKER), str(tmp / "jobs.json")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = {Path(job["out"]).name.split(".")[0]: load_file(job["out"]) for job in jobs}
    return {"tmp": tmp, "x": x, "ours": ours, "saelens": outputs}


def _architecture(result: dict[str, torch.Tensor]) -> str:
    return "".join(chr(c) for c in result["architecture"].tolist())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_saelens_loads_our_export_and_computes_the_same_map(roundtrip, variant):
    sae, theirs, x = roundtrip["ours"][variant], roundtrip["saelens"][variant], roundtrip["x"]
    assert _architecture(theirs) == ARCHITECTURE_OF_VARIANT[variant]
    with torch.no_grad():
        h = sae.encode(x)
        x_hat = sae.decode(h)
    assert (h > 0).any(dim=1).float().mean() > 0.5  # a real test: most rows have active latents
    # the same latents fire, except where both codes are round-off away from 0 (two code paths, any CPU)
    differs = (h > 0) != (theirs["encode"] > 0)
    assert not (differs & (h.abs() + theirs["encode"].abs() > 1e-5)).any()
    torch.testing.assert_close(theirs["encode"], h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(theirs["decode"], x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs["forward"], x_hat, rtol=1e-5, atol=1e-5)


def test_batch_topk_exports_its_inference_threshold(roundtrip):
    sae = roundtrip["ours"]["batch_topk"]
    assert float(sae.threshold) > 0  # trained: the threshold moved, so the JumpReLU mask is exercised
    weights = load_file(roundtrip["tmp"] / "batch_topk" / WEIGHTS_FILENAME)
    assert torch.equal(weights["threshold"], sae.threshold.expand(D_SAE))


def test_constant_norm_rescale_is_applied_by_saelens_on_raw_activations(roundtrip):
    """Our SAE sees x scaled to norm sqrt(d_in); SAELens, told so, takes raw x and undoes the scale on output."""
    sae, theirs, x = roundtrip["ours"]["aen"], roundtrip["saelens"]["aen_rescaled"], roundtrip["x"]
    scale = D_IN ** 0.5 / x.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        h = sae.encode(x * scale)
        x_hat = sae.decode(h) / scale
    torch.testing.assert_close(theirs["encode"], h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(theirs["forward"], x_hat, rtol=1e-5, atol=1e-5)
    assert read_saelens_config(roundtrip["tmp"] / "aen_rescaled")["normalize_activations"] == "constant_norm_rescale"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_import_of_our_export_restores_variant_and_weights(roundtrip, variant):
    sae = roundtrip["ours"][variant]
    back = import_from_saelens(roundtrip["tmp"] / variant)
    assert back.config() == sae.config() and not back.training
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    cfg = read_saelens_config(roundtrip["tmp"] / variant)
    assert (cfg["metadata"]["model_name"], cfg["metadata"]["hook_name"]) == ("toy", "blocks.0.hook_resid_post")


@pytest.mark.parametrize("architecture, variant", [("standard", "relu_l1"), ("topk", "topk"), ("jumprelu", "batch_topk")])
def test_saelens_written_sae_imports_and_computes_the_same_map(roundtrip, architecture, variant):
    theirs, x = roundtrip["saelens"][f"made_{architecture}"], roundtrip["x"]
    sae = import_from_saelens(roundtrip["tmp"] / f"made_{architecture}")
    assert sae.variant == variant
    with torch.no_grad():
        h = sae.encode(x)
        x_hat = sae.decode(h)
    assert 0 < float((h > 0).float().mean()) < 1
    torch.testing.assert_close(h, theirs["encode"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat, theirs["decode"], rtol=1e-5, atol=1e-5)


# --- bad inputs: no sae-lens needed -----------------------------------------------------------------------------
def _export(tmp_path: Path, variant: str = "relu_l1", **hyperparameters) -> Path:
    return export_to_saelens(make_sae(variant, 4, 6, **hyperparameters), tmp_path / "sae")


def _edit_cfg(folder: Path, **changes) -> None:
    cfg = json.loads((folder / CFG_FILENAME).read_text())
    cfg.update(changes)
    (folder / CFG_FILENAME).write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, message", [
    ({"architecture": "gated"}, "architecture 'gated' has no aen_mini counterpart"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm' is not supported"),
    ({"dtype": "int8"}, "dtype 'int8' is not one of"),
    ({"d_sae": 7}, "metadata.aen_mini sizes disagree"),
    ({"metadata": {"aen_mini": {"variant": "topk", "d_in": 4, "d_sae": 6}}}, "does not describe a standard SAE"),
    ({"finetuning_scaling_factor": True}, "finetuning_scaling_factor"),
])
def test_import_refuses_unsupported_configs_naming_the_file(tmp_path, changes, message):
    folder = _export(tmp_path)
    _edit_cfg(folder, **changes)
    with pytest.raises(ValueError, match=message) as err:
        import_from_saelens(folder)
    assert str(folder) in str(err.value)


def test_import_refuses_wrong_shapes_and_missing_or_damaged_files(tmp_path):
    folder = _export(tmp_path)
    _edit_cfg(folder, d_in=5, metadata={})
    with pytest.raises(ValueError, match=r"does not fit d_in=5, d_sae=6.*W_enc: \(4, 6\), expected \(5, 6\)"):
        import_from_saelens(folder)
    with pytest.raises(FileNotFoundError, match="cfg.json is missing"):
        import_from_saelens(tmp_path / "nowhere")
    (folder / CFG_FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        import_from_saelens(folder)
    folder = _export(tmp_path)
    data = (folder / WEIGHTS_FILENAME).read_bytes()
    (folder / WEIGHTS_FILENAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        import_from_saelens(folder)


def test_import_refuses_per_latent_jumprelu_thresholds(tmp_path):
    folder = _export(tmp_path, "batch_topk", k=2)
    weights = load_file(folder / WEIGHTS_FILENAME)
    weights["threshold"] = torch.linspace(0, 1, 6)
    save_file(weights, folder / WEIGHTS_FILENAME)
    with pytest.raises(ValueError, match="per-latent"):
        import_from_saelens(folder)


def test_export_rejects_bad_arguments(tmp_path):
    sae = make_sae("aen", 4, 6)
    with pytest.raises(ValueError, match=r"normalize_activations must be one of \['none', 'constant_norm_rescale'"):
        export_to_saelens(sae, tmp_path / "a", normalize_activations="layer_norm")
    with pytest.raises(TypeError, match="sae must be an aen_mini SAE"):
        export_to_saelens(torch.nn.Linear(2, 2), tmp_path / "b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        export_to_saelens(sae, tmp_path / "file")
    with torch.no_grad():
        sae.W_dec[0, 0] = float("nan")
    with pytest.raises(ValueError, match="refusing to export W_dec"):
        export_to_saelens(sae, tmp_path / "c")


def test_exported_sae_plugs_back_into_training_state_free(tmp_path):
    """The import is an inference SAE: training state (EMA, warm-up position) starts fresh, weights are kept."""
    sae = make_sae("aen", 4, 6, warmup_steps=3)
    sae.reweighting.ema.fill_(0.5)
    sae.reweighting.step.fill_(7)
    back = import_from_saelens(export_to_saelens(sae, tmp_path / "sae"))
    assert int(back.reweighting.step) == 0 and torch.equal(back.reweighting.ema, torch.ones(6))
    assert torch.equal(back.W_dec, sae.W_dec)
