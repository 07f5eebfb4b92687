"""Test-session settings. One intra-op thread: the test problems are tiny, and on CI's 2 shared cores a
second thread only adds contention (tiny CPU models ran ~30x slower with 2 threads)."""
import torch

torch.set_num_threads(1)


def tiny_neox(layers: int, width: int):
    """A Pythia-70M-shaped GPT-NeoX shrunk to ``layers`` blocks of ``width`` (heads of 8 dims): a fast CPU model."""
    from aen_mini.lm.models import load_model

    return load_model("pythia-70m-shaped", config_overrides={"num_hidden_layers": layers, "hidden_size": width,
                                                              "intermediate_size": 2 * width,
                                                              "num_attention_heads": width // 8, "vocab_size": 4096})
