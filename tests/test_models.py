"""Model registry: published configs, hook naming against plain transformers, clear errors, offline loading."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from aen_mini.lm import models
from aen_mini.lm.models import LLAMA_SHAPED_LAYERS, load_model, shaped_config

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores

TINY_NEOX = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}


def _n_params_on_meta(config) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no init
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def test_pythia_shaped_config_has_pythia_70m_parameter_count():
    cfg = shaped_config("pythia-70m-shaped")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (512, 6, 8, 50304)
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.25 and cfg.use_parallel_residual
    assert _n_params_on_meta(cfg) == 70_426_624  # Pythia paper, Table 1 (70M, with embeddings)


def test_llama_shaped_config_has_llama_31_8b_parameter_count():
    cfg = shaped_config("llama-3.1-8b-shaped")
    assert cfg.num_hidden_layers == LLAMA_SHAPED_LAYERS == 17
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size) == (4096, 32, 8, 14336, 128256)
    assert cfg.rope_parameters["rope_theta"] == 500000.0 and cfg.rope_parameters["rope_type"] == "llama3"
    assert _n_params_on_meta(shaped_config("llama-3.1-8b-shaped", num_hidden_layers=32)) == 8_030_261_248


def test_bridge_hook_is_the_block_output_of_plain_transformers():
    m = load_model("pythia-70m-shaped", config_overrides=TINY_NEOX, seed=3)
    reference = models._random_init(shaped_config("pythia-70m-shaped", **TINY_NEOX), "cpu", torch.float32, seed=3).eval()
    tokens = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        hidden = reference(tokens, output_hidden_states=True).hidden_states
        captured = []
        logits = m.run_with_hooks(tokens, hooks=[("blocks.0.hook_resid_post", captured.append)])
        assert torch.allclose(captured[0], hidden[1], atol=1e-6)
        assert torch.allclose(logits, reference(tokens).logits, atol=1e-5)
    assert m.kind == "causal" and m.d_model == 64 and not m.online and "random init" in m.label


def test_minilm_is_the_real_encoder():
    from transformers import BertModel

    m = load_model("minilm-l6")
    assert (m.kind, m.d_model, m.n_layers, m.bos_token_id) == ("encoder", 384, 6, m.tokenizer.cls_token_id)
    enc = m.tokenizer(["a cat sat", "the parser reads tokens from a stream"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = m.run_with_hooks(enc["input_ids"], enc["attention_mask"].bool())
        plain = BertModel.from_pretrained(str(models._minilm_dir())).eval()(**enc).last_hidden_state
    keep = enc["attention_mask"].bool()
    assert torch.allclose(ours[keep], plain[keep], atol=1e-4)  # eager vs sdpa attention: ~1e-5 apart


def test_tiny_neox_loads_from_the_package_assets():
    m = load_model("tiny-neox")
    assert m.kind == "causal" and m.d_model == 256 and m.context_format.prefix_id == m.tokenizer.eos_token_id == 0


def test_unknown_model_lists_the_registry():
    with pytest.raises(ValueError, match="pythia-70m-shaped"):
        load_model("gpt-5")


def test_unknown_hook_lists_valid_hooks():
    m = load_model("pythia-70m-shaped", config_overrides=TINY_NEOX)
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_post"):
        m.check_hook("blocks.7.hook_resid_post")
    assert m.check_hook("blocks.1.hook_resid_post") == 1


def test_hub_failure_names_the_offline_models(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(RuntimeError, match="offline model.*tiny-neox"):
        load_model("EleutherAI/pythia-70m-deduped")


def test_missing_tiny_neox_weights_name_the_build_command(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "TINY_NEOX_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="train_tiny_lm"):
        load_model("tiny-neox")


def test_config_overrides_only_for_random_init_models():
    with pytest.raises(ValueError, match="config_overrides"):
        load_model("minilm-l6", config_overrides={"num_hidden_layers": 1})
