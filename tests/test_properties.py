"""Property-based robustness of the public API: random shapes, dtypes, NaN/inf, empty batches and extreme
hyperparameters either work (and then give finite, well-shaped results) or raise our clear ValueError/TypeError,
never a deep torch error and never silently NaN weights."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aen_mini.io.checkpoint import load_checkpoint, save_checkpoint
from aen_mini.data.source import TensorSource
from aen_mini.sae import VARIANTS, hyperparameter_names, make_sae, sae_from_config
from aen_mini.eval.solve import solve_sparse_codes
from aen_mini.train.loop import TrainConfig, train

SETTINGS = settings(max_examples=int(__import__("os").environ.get("AEN_HYPOTHESIS_EXAMPLES", 30)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLEAN = (ValueError, TypeError)
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64, torch.bool]

sizes = st.integers(min_value=-1, max_value=6)
extreme_numbers = st.sampled_from([0, 1, 0.5, 1e-30, 1e-3, 2.0, 1e30, 1e300, -1.0, math.inf, math.nan, True, "1", None])
variants = st.sampled_from(sorted(VARIANTS))


def _clear(err: BaseException) -> None:
    """Our errors name what is wrong in a readable sentence, not a torch internals dump."""
    assert isinstance(err, CLEAN), f"{type(err).__name__}: {err}"
    assert len(str(err)) > 10 and "c10::" not in str(err) and "m1 and m2" not in str(err), str(err)


@st.composite
def sae_specs(draw):
    variant = draw(variants)
    names = hyperparameter_names(variant)
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
    return variant, draw(sizes), draw(sizes), {name: draw(extreme_numbers) for name in chosen}


@st.composite
def batches(draw, d_in: int):
    """A tensor that may have the wrong rank, width, dtype, no rows, NaN/inf or huge values."""
    shape = draw(st.sampled_from([(draw(st.integers(0, 5)), d_in), (3, d_in + 1), (d_in,), (2, 2, d_in), ()]))
    dtype = draw(st.sampled_from(DTYPES))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) * draw(
        st.sampled_from([1.0, 1e-20, 1e4]))
    if x.numel() and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return x.to(dtype)


@SETTINGS
@given(sae_specs())
def test_make_sae_works_or_refuses_clearly(spec):
    variant, d_in, d_sae, hyperparameters = spec
    try:
        sae = make_sae(variant, d_in, d_sae, **hyperparameters)
    except Exception as err:  # noqa: BLE001 - the property is about which exceptions escape
        _clear(err)
        return
    assert sae_from_config(sae.config()).config() == sae.config()
    assert all(bool(torch.isfinite(p).all()) for p in sae.parameters())
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(d_sae))


@SETTINGS
@given(variants, batches(d_in=4))
def test_encode_decode_loss_work_or_refuse_clearly(variant, x):
    sae = make_sae(variant, 4, 6, **({"k": 2} if "topk" in variant else {}))
    for call in (lambda: sae.encode(x), lambda: sae.loss(x)["loss"], lambda: sae.decode(sae.encode(x)), sae):
        try:
            out = call(x) if call is sae else call()
        except Exception as err:  # noqa: BLE001
            _clear(err)
            continue
        out = out[0] if isinstance(out, tuple) else out
        assert out.dtype == sae.W_enc.dtype  # inputs are cast to the weights' dtype
        moderate = x.numel() == 0 or bool((x.float().abs() < 1e5).all())  # False for NaN/inf too
        if moderate:
            assert bool(torch.isfinite(out).all())


@st.composite
def training_runs(draw):
    variant = draw(variants)
    hyper = {"k": draw(st.sampled_from([1, 3]))} if "topk" in variant else {}
    if variant in ("relu_l1", "elastic_net", "adaptive_lasso", "aen"):
        hyper["l1_coeff"] = draw(st.sampled_from([0.0, 1e-3, 1.0, 1e6, 1e30]))
    if variant in ("elastic_net", "aen"):
        hyper["l2_coeff"] = draw(st.sampled_from([0.0, 1e-3, 1e30]))
    if variant in ("adaptive_lasso", "aen"):
        hyper["gamma"] = draw(st.sampled_from([0.0, 1.0, 50.0]))
        hyper["ema_beta"] = draw(st.sampled_from([0.0, 0.5, 0.999]))
    rows = draw(st.integers(1, 12))
    x = torch.randn(rows, 4, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    x = (x * draw(st.sampled_from([1.0, 1e-20, 1e3, 1e18]))).to(draw(st.sampled_from(DTYPES[:4])))
    cfg = {"steps": draw(st.integers(1, 6)), "batch_size": draw(st.sampled_from([1, 5, 64])),
           "lr": draw(st.sampled_from([1e-6, 1e-3, 1.0])), "grad_clip": draw(st.sampled_from([0.0, 1.0, 1e-12])),
           "resample_every": draw(st.sampled_from([0, 1, 2])), "precision": draw(st.sampled_from(["fp32", "bf16"]))}
    return variant, hyper, x, cfg


@SETTINGS
@given(training_runs())
def test_training_never_returns_nonfinite_weights(run):
    variant, hyper, x, cfg = run
    sae = make_sae(variant, 4, 6, dead_after_tokens=2, **hyper)
    try:
        train(sae, TensorSource(x), TrainConfig(**cfg, progress=False, log_every=2))
    except Exception as err:  # noqa: BLE001
        _clear(err)  # NonFiniteLossError is a ValueError
        return
    for name, value in sae.state_dict().items():
        assert not value.is_floating_point() or bool(torch.isfinite(value).all()), name


@SETTINGS
@given(st.sampled_from([torch.float16, torch.bfloat16, torch.float64]), variants)
def test_checkpoint_round_trips_any_weight_dtype(tmp_path_factory, dtype, variant):
    sae = make_sae(variant, 3, 5, **({"k": 2} if "topk" in variant else {})).to(dtype)
    path = tmp_path_factory.mktemp("ckpt") / "c.safetensors"
    save_checkpoint(path, sae)
    back = load_checkpoint(path).sae
    for name, value in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name].to(value.dtype), value), name


@SETTINGS
@given(batches(d_in=3), st.sampled_from([None, "zeros", "empty", "wide"]), extreme_numbers, extreme_numbers)
def test_solver_works_or_refuses_clearly(x, dictionary, l1, l2):
    D = {None: torch.randn(3, 5), "zeros": torch.zeros(3, 5), "empty": torch.zeros(3, 0),
         "wide": torch.randn(3, 40)}[dictionary]
    try:
        codes = solve_sparse_codes(x, D, l1, l2 if l2 is not None else 0.0, max_iter=200)
    except Exception as err:  # noqa: BLE001
        _clear(err)
        return
    assert codes.h.shape == (x.shape[0], D.shape[1]) and bool(torch.isfinite(codes.h).all())
    assert bool((codes.h >= 0).all())


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "gpu"}, "device must name a torch device"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*63\)"),
    ({"adam_betas": (0.9,)}, "adam_betas must be a pair"),
    ({"adam_betas": (0.9, 1.0)}, r"adam_betas must be a number in \[0.0, 1.0\)"),
    ({"precision": "fp16"}, r"precision must be one of \['fp32', 'bf16'\]"),
    ({"compile": "yes"}, "compile must be True or False"),
    ({"lr": 0.0}, r"lr must be a number in \(0.0, 1.0\]"),
    ({"lr_decay_start": 1.5}, r"lr_decay_start must be a number in \[0.0, 1.0\]"),
    ({"checkpoint_every": 5}, "checkpoint_every is set but checkpoint_path is not"),
    ({"checkpoint_path": 3}, "checkpoint_path must be a str or Path"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_train_config_names_the_field_and_allowed_values(kwargs, message):
    with pytest.raises(CLEAN, match=message):
        TrainConfig(**{"steps": 2, **kwargs})


def test_train_refuses_wrong_argument_types():
    sae, source = make_sae("aen", 4, 6), TensorSource(torch.randn(8, 4))
    with pytest.raises(TypeError, match="source must be an ActivationSource"):
        train(sae, torch.randn(8, 4), TrainConfig(steps=1))
    with pytest.raises(TypeError, match="sae must be an aen_mini SAE"):
        train("aen", source, TrainConfig(steps=1))
    with pytest.raises(TypeError, match="cfg must be a TrainConfig"):
        train(sae, source, {"steps": 1})
    with pytest.raises(ValueError, match="threshold_momentum must be a number in"):
        make_sae("batch_topk", 4, 6, k=2, threshold_momentum=5.0)
