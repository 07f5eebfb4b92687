"""The batched grid trainer trains each SAE exactly as the one-SAE trainer does, and draws spiked data on the device."""
import pytest
import torch

from aen_mini.data.synthetic import spiked_dictionary
from aen_mini.train.grid import GridConfig, GridRun, SpikedStreams, train_grid
from aen_mini.sae import make_sae
from aen_mini.train.loop import TrainConfig, train


class ListSource:
    """Serves fixed batches in order (the ActivationSource protocol)."""

    def __init__(self, batches):
        self.batches, self.i, self.d_in = batches, 0, batches[0].shape[-1]

    def next_batch(self, batch_size):
        assert batch_size == self.batches[self.i].shape[0]
        self.i += 1
        return self.batches[self.i - 1]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


D_IN, D_SAE, STEPS, BATCH = 6, 12, 4, 16

# (variant, hyperparameters, init, l1_warmup_steps, stream)
RELU_RUNS = [
    ("relu_l1", {"l1_coeff": 0.2}, "ours", 0, 0),
    ("relu_l1", {"l1_coeff": 0.2}, "authors", 3, 1),
    ("elastic_net", {"l1_coeff": 0.1, "l2_coeff": 0.05, "loss_scale": "mean"}, "authors", 0, 0),
    ("aen", {"l1_coeff": 0.1, "l2_coeff": 0.01, "ema_beta": 0.5, "warmup_start": 1, "warmup_steps": 2, "ref_pct": 0.2,
             "w_max": 3.0}, "ours", 2, 1),
    ("adaptive_lasso", {"l1_coeff": 0.1, "ema_beta": 0.9, "gamma": 0.5}, "authors", 0, 0),
]
TOPK_RUNS = [
    ("topk", {"k": 3, "aux_coeff": 0.5, "dead_after_tokens": 16}, "authors", 0, 0),
    ("topk", {"k": 3, "aux_coeff": 0.0}, "ours", 0, 1),
]


@pytest.mark.parametrize("spec", [RELU_RUNS, TOPK_RUNS], ids=["relu_family", "topk"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_grid_equals_one_sae_at_a_time(spec, clip):
    g = torch.Generator().manual_seed(0)
    streams = [[torch.rand(BATCH, D_IN, generator=g) * 2 + 0.3 * s for _ in range(STEPS)] for s in range(2)]

    def build(i, variant, hp):
        return make_sae(variant, D_IN, D_SAE, seed=10 + i, **hp)

    runs = [GridRun(build(i, v, hp), stream=s, init=init, l1_warmup_steps=w) for i, (v, hp, init, w, s) in enumerate(spec)]
    drawn = []

    def data(batch):  # the batches of every stream at this step
        t = len(drawn)
        drawn.append(t)
        return torch.stack([streams[0][t], streams[1][t]])

    cfg = GridConfig(steps=STEPS, batch_size=BATCH, lr=1e-2, grad_clip=clip, log_every=2)
    trained, trainer = train_grid(runs, data, cfg)
    assert len(trainer.history) == 2 and trainer.graph is None
    for i, (v, hp, init, w, s) in enumerate(spec):
        ref = build(i, v, hp)
        train(ref, ListSource(streams[s]), TrainConfig(steps=STEPS, batch_size=BATCH, lr=1e-2, grad_clip=clip, init=init,
                                                       l1_warmup_steps=w, progress=False, log_every=STEPS))
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "tokens_since_fired"):
            assert torch.allclose(getattr(trained[i], name).float(), getattr(ref, name).float(), atol=1e-5), (v, name)
        if hasattr(ref, "reweighting"):
            assert torch.allclose(trained[i].reweighting.ema, ref.reweighting.ema, atol=1e-6)
            assert torch.allclose(trained[i].l1_weights(), ref.l1_weights(), atol=1e-5)


def test_mixing_topk_and_relu_or_two_ks_is_refused():
    data = lambda b: torch.zeros(1, b, D_IN)  # noqa: E731
    with pytest.raises(ValueError, match="not a mix"):
        train_grid([GridRun(make_sae("topk", D_IN, D_SAE, k=2)), GridRun(make_sae("relu_l1", D_IN, D_SAE))], data,
                   GridConfig(steps=1, batch_size=4))
    with pytest.raises(ValueError, match="one k"):
        train_grid([GridRun(make_sae("topk", D_IN, D_SAE, k=2)), GridRun(make_sae("topk", D_IN, D_SAE, k=3))], data,
                   GridConfig(steps=1, batch_size=4))


def test_spiked_streams_are_exactly_k_sparse_on_their_dictionaries():
    streams = SpikedStreams(16, 32, 3, [(0.0, 0), (0.9, 1)], seed=0)
    x, codes = streams.draw(500)
    assert x.shape == (2, 500, 16) and codes.shape == (2, 500, 32)
    assert torch.equal((codes > 0).sum(-1), torch.full((2, 500), 3))
    assert codes[codes > 0].min() >= 1.0 and codes.max() <= 3.0
    assert torch.allclose(x[1], codes[1] @ spiked_dictionary(16, 32, 0.9, 1).T, atol=1e-5)
    centred = SpikedStreams(16, 32, 3, [(0.9, 1)], centre=True, seed=0)
    xc, _ = centred.draw(20000)
    assert xc.mean(1).norm() < 0.05 * x[1].mean(0).norm()
    held, _ = streams.held_out(100)
    assert not torch.allclose(held, streams.draw(100)[0])


def test_grid_config_is_a_train_config_and_refuses_what_a_grid_does_not_do():
    cfg = GridConfig(steps=20, lr=1.0, lr_warmup_steps=4, lr_decay_start=0.5)
    reference = TrainConfig(steps=20, lr=1.0, lr_warmup_steps=4, lr_decay_start=0.5)
    assert [cfg.lr_at(s) for s in range(20)] == [reference.lr_at(s) for s in range(20)]
    with pytest.raises(ValueError, match=r"a grid does not implement \['fast', 'resample_every'\]"):
        GridConfig(steps=5, fast=True, resample_every=2)
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        GridConfig(steps=5, lr_warmup_steps=-1)


def test_relu_family_grads_equal_autograd_of_the_written_loss():
    """The written-out gradient of grid_grads is autograd's gradient of the loss its docstring states (float64)."""
    from aen_mini.train.grid_grads import relu_family_grads

    g = torch.Generator().manual_seed(3)
    G, B, n, m = 3, 8, 5, 7
    p = {"W_enc": torch.randn(G, m, n, generator=g, dtype=torch.float64),
         "b_enc": torch.randn(G, m, generator=g, dtype=torch.float64) * 0.3,
         "W_dec": torch.randn(G, n, m, generator=g, dtype=torch.float64),
         "b_dec": torch.randn(G, n, generator=g, dtype=torch.float64)}
    x = torch.randn(G, B, n, generator=g, dtype=torch.float64)
    scale, c1, c2 = torch.tensor([1.0, 0.2, 0.5], dtype=torch.float64), torch.rand(G, m, generator=g, dtype=torch.float64), \
        torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    h = torch.relu((x - leaves["b_dec"][:, None]) @ leaves["W_enc"].transpose(1, 2) + leaves["b_enc"][:, None])
    x_hat = h @ leaves["W_dec"].transpose(1, 2) + leaves["b_dec"][:, None]
    loss = (scale * (x - x_hat).pow(2).sum(-1).mean(-1) + (h * c1[:, None]).sum(-1).mean(-1)
            + c2 * h.pow(2).sum(-1).mean(-1)).sum()
    loss.backward()
    for v in p.values():
        v.grad = torch.full_like(v, float("nan"))  # every entry must be written
    codes, err = relu_family_grads(p, x, (-2 * scale / B)[:, None, None], c1 / B, 2 * c2 / B)
    assert (codes > 0).any() and (codes == 0).any()
    assert torch.allclose(codes, h.detach()) and torch.allclose(err, (x - x_hat).detach())
    for name in p:
        assert torch.allclose(p[name].grad, leaves[name].grad, atol=1e-12), name


class CountingData:
    """Deterministic batches from a step counter kept on the device, so a CUDA graph replays them exactly."""

    def __init__(self, streams, d_in, device):
        self.count = torch.zeros((), device=device)
        self.base = torch.arange(streams * d_in, device=device, dtype=torch.float32).view(streams, 1, d_in)
        self.rows = None

    def __call__(self, batch):
        if self.rows is None:
            self.rows = torch.arange(batch, device=self.base.device, dtype=torch.float32).view(1, batch, 1)
        self.count.add_(1)
        return torch.sin(self.base * 0.37 + self.rows * 1.3 + self.count * 0.11) + 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("spec", [RELU_RUNS, TOPK_RUNS], ids=["relu_family", "topk"])
def test_cuda_graph_of_several_steps_trains_as_eager_steps(spec):
    """Several steps per graph replay (and the one-step graph for the rest) train exactly as eager steps do."""
    torch.backends.cuda.matmul.allow_tf32 = False
    out = []
    for graph in (False, True):
        runs = [GridRun(make_sae(v, D_IN, D_SAE, seed=10 + i, **hp), stream=s, init=init, l1_warmup_steps=w)
                for i, (v, hp, init, w, s) in enumerate(spec)]
        # 24 steps, logs at 12 and 24: 3 eager, 2 four-step replays, 1 one-step replay | 3 four-step replays
        cfg = GridConfig(steps=24, batch_size=BATCH, lr=1e-2, lr_decay_start=0.5, grad_clip=0.05, log_every=12,
                         device="cuda", graph=graph, steps_per_graph=4)
        trained, trainer = train_grid(runs, CountingData(2, D_IN, "cuda"), cfg)
        assert (trainer.graph is not None) == graph and trainer.graph_error is None
        out.append((trained, trainer.history))
    (eager, eager_log), (graphed, graph_log) = out
    assert [h["step"] for h in graph_log] == [12, 24]
    for ours, theirs in zip(graph_log, eager_log):  # the last step's statistics, after either kind of replay
        assert ours["l0"] == pytest.approx(theirs["l0"]) and ours["mse"] == pytest.approx(theirs["mse"], rel=1e-4)
    for a, b in zip(eager, graphed):
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "tokens_since_fired"):
            assert torch.allclose(getattr(a, name).float(), getattr(b, name).float(), atol=1e-5), name
