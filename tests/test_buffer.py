"""ShuffleBuffer: every row out exactly once, mixed across chunks, refilled at half, independent of request sizes."""
import torch

from aen_mini.data.buffer import ShuffleBuffer


def _supplier(sizes, calls=None):
    """Chunks of consecutive row ids with the given sizes, then None."""
    starts = torch.tensor([0] + list(sizes)).cumsum(0).tolist()
    it = iter(range(len(sizes)))

    def supply():
        k = next(it, None)
        if calls is not None:
            calls.append(k)
        return None if k is None else torch.arange(starts[k], starts[k + 1])
    return supply


def _drain(buffer, supply, request_sizes):
    out, i = [], 0
    while (rows := buffer.draw(request_sizes[i % len(request_sizes)], supply)) is not None:
        out.append(rows)
        i += 1
    return torch.cat(out)


SIZES = [7, 0, 13, 5, 29, 1, 11, 17, 3, 23]  # uneven chunks, one empty


def test_every_row_comes_out_exactly_once_per_pass():
    out = _drain(ShuffleBuffer(capacity=20, seed=1), _supplier(SIZES), request_sizes=[3, 8, 1])
    assert torch.equal(out.sort().values, torch.arange(sum(SIZES)))


def test_rows_are_mixed_across_chunks():
    out = _drain(ShuffleBuffer(capacity=40, seed=0), _supplier(SIZES), request_sizes=[10])
    assert not torch.equal(out, torch.arange(sum(SIZES)))
    chunk_of = torch.bucketize(out[:10], torch.tensor(SIZES).cumsum(0), right=True)
    assert len(chunk_of.unique()) >= 3  # the first batch already draws from several chunks


def test_output_does_not_depend_on_how_requests_are_split():
    one_by_one = _drain(ShuffleBuffer(capacity=16, seed=5), _supplier(SIZES), request_sizes=[1])
    in_bulk = _drain(ShuffleBuffer(capacity=16, seed=5), _supplier(SIZES), request_sizes=[50, 3])
    assert torch.equal(one_by_one, in_bulk)


def test_refills_only_when_half_empty():
    calls = []
    buffer = ShuffleBuffer(capacity=10, seed=0)
    supply = _supplier([4] * 10, calls)
    buffer.draw(1, supply)
    assert calls == [0, 1, 2] and len(buffer) == 11  # filled to >= capacity, then one row out
    buffer.draw(5, supply)  # 11 -> 6: still above half
    assert calls == [0, 1, 2] and len(buffer) == 6
    buffer.draw(1, supply)  # reaches 5 = half; no refill until the next row is asked for
    assert calls == [0, 1, 2]
    buffer.draw(1, supply)
    assert calls == [0, 1, 2, 3, 4] and len(buffer) == 12
