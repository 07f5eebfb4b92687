import pytest

from aen_mini.run.planning import parse_count, plan_run


def test_paper_pythia_plan_by_hand():
    p = plan_run(512, 4096, 204_800_000, batch_size=8192)
    assert p.steps == 25_000  # the authors' 25k steps x 8192 tokens
    n_params = 2 * 512 * 4096 + 512 + 4096
    assert p.weights_gb == pytest.approx(4 * n_params / 1e9)
    assert p.flop_per_token == 12 * 512 * 4096
    assert p.total_pflop == pytest.approx(12 * 512 * 4096 * 204.8e6 / 1e15)
    assert p.hours_at["100 TFLOP/s"] == pytest.approx(p.total_pflop * 1e15 / 1e14 / 3600)


def test_llama_plan_memory_by_hand():
    p = plan_run(4096, 131072, 409_600_000, batch_size=4096, compute_dtype="bf16")
    weights = 4 * (2 * 4096 * 131072 + 4096 + 131072) / 1e9  # ~4.3 GB of fp32 weights
    assert p.total_gpu_gb == pytest.approx(4 * weights + 2 * 4096 * (2 * 4096 + 3 * 131072) / 1e9)
    assert p.cache_tb == pytest.approx(2 * 409.6e6 * 4096 / 1e12)  # 3.4 TB of bf16 activations


@pytest.mark.parametrize("text,value", [("204.8M", 204_800_000), ("25k", 25_000), ("8192", 8192), ("1.5B", 1_500_000_000), (7, 7)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["abc", "-5", "0.5", "1.2345k"])
def test_parse_count_rejects(text):
    with pytest.raises(ValueError, match="count|whole"):
        parse_count(text)
