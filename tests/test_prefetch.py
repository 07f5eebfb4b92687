"""PrefetchSource: the same batches as the wrapped source, in order, and an exact resume although the producer
thread runs ahead of the consumer."""
import pytest
import torch

from aen_mini.data.prefetch import PrefetchSource
from aen_mini.data.source import TensorSource
from aen_mini.data.synthetic import SpikedSource


def tensor_source():
    return TensorSource(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), seed=3)


def test_yields_exactly_the_batches_of_the_wrapped_source():
    plain, wrapped = tensor_source(), PrefetchSource(tensor_source(), depth=3)
    for _ in range(12):  # 12 x 7 rows: crosses epochs (re-shuffles) of the 50-row tensor
        assert torch.equal(wrapped.next_batch(7), plain.next_batch(7))
    wrapped.close()


def test_state_excludes_the_queued_batches_and_resumes_exactly():
    wrapped = PrefetchSource(SpikedSource(n=8, m=16, k=2, seed=1), depth=4)
    for _ in range(3):
        wrapped.next_batch(5)
    state = wrapped.state_dict()
    expected = [wrapped.next_batch(5) for _ in range(4)]
    # the wrapped source itself is at least at batch 7, past the state taken after batch 3
    assert wrapped.source.state_dict()["batches_drawn"] >= 7 and state["batches_drawn"] == 3
    fresh = SpikedSource(n=8, m=16, k=2, seed=1)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.next_batch(5), e) for e in expected)
    # loading into the wrapper rewinds it too
    wrapped.load_state_dict(state)
    assert all(torch.equal(wrapped.next_batch(5), e) for e in expected)
    wrapped.close()


def test_state_before_the_first_batch_is_the_starting_state():
    src = tensor_source()
    src.next_batch(9)
    start = src.state_dict()
    wrapped = PrefetchSource(src, depth=2)
    assert wrapped.state_dict() == start
    wrapped.next_batch(4)
    assert wrapped.state_dict() == {"epoch": 0, "position": 13}
    wrapped.close()


def test_changing_the_batch_size_keeps_the_stream_of_rows():
    plain, wrapped = tensor_source(), PrefetchSource(tensor_source(), depth=3)
    for size in (4, 4, 9, 2, 2):
        assert torch.equal(wrapped.next_batch(size), plain.next_batch(size))
    wrapped.close()


class Failing(TensorSource):
    def next_batch(self, batch_size):
        if self.position >= 10:
            raise RuntimeError("harvest failed")
        return super().next_batch(batch_size)


def test_an_error_in_the_producer_reaches_the_consumer():
    wrapped = PrefetchSource(Failing(torch.zeros(50, 4), shuffle=False), depth=2)
    wrapped.next_batch(5)
    wrapped.next_batch(5)
    with pytest.raises(RuntimeError, match="harvest failed"):
        wrapped.next_batch(5)


def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match="ActivationSource"):
        PrefetchSource(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="depth"):
        PrefetchSource(tensor_source(), depth=0)
