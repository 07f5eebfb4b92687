"""The authors' "spiked" synthetic benchmark: a coherent dictionary and exactly-k-sparse codes.

Atoms are d_j ∝ sqrt(1 - rho) u_j + sqrt(rho) v, with u_j independent uniform directions and v one
unit "spike" shared by every atom, then renormalised. For large n the u_j are nearly orthogonal to
each other and to v, so cos(d_i, d_j) -> rho: rho dials the dictionary's coherence. Each sample has
exactly k active atoms (uniform random support) with magnitudes drawn from U[low, high].

``centre=True`` subtracts the population mean E[x] = D E[c] = (k / m) (low + high) / 2 * D 1 from every sample:
the rival explanation of starvation (arXiv 2605.31518) is that uncentred data, whose shared spike sits in every
sample, is what starves latents. The true codes are unchanged.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from aen_mini.validate import check_in_range, check_nonnegative, check_nonnegative_int, check_positive_int

__all__ = ["spiked_dictionary", "SpikedSource"]


def _generator(*key: object) -> torch.Generator:
    """A CPU generator whose seed is a stable hash of `key` (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def spiked_dictionary(
    n: int = 256, m: int = 1024, rho: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Unit-norm spiked dictionary of shape (n, m): column j is normalise(sqrt(1-rho) u_j + sqrt(rho) v)."""
    n, m = check_positive_int("n", n), check_positive_int("m", m)
    rho, seed = check_in_range("rho", rho, 0.0, 1.0, high_open=True), check_nonnegative_int("seed", seed)
    gen = _generator("dictionary", seed)
    # Built in float64 so the requested dtype only rounds the final atoms.
    u = torch.randn(n, m, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    v = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    v = v / v.norm()
    atoms = (1.0 - rho) ** 0.5 * u + rho**0.5 * v
    return (atoms / atoms.norm(dim=0, keepdim=True)).to(dtype)


class SpikedSource:
    """Streaming activation source with ground truth: x = D c + noise, c exactly k-sparse and nonnegative.

    `next_batch` draws batch i from a generator seeded by a hash of (seed, i), so the stream is seekable:
    `state_dict()` only needs the number of batches drawn, and a resumed source yields the same batches.
    """

    def __init__(
        self,
        n: int = 256,
        m: int = 1024,
        k: int = 16,
        rho: float = 0.0,
        magnitude: tuple[float, float] = (1.0, 3.0),
        noise_std: float = 0.0,
        seed: int = 0,
        centre: bool = False,
    ) -> None:
        self.n, self.m, self.k = check_positive_int("n", n), check_positive_int("m", m), check_positive_int("k", k)
        if k > m:
            raise ValueError(f"k must be <= m (= {m}), got {k}")
        self.rho = check_in_range("rho", rho, 0.0, 1.0, high_open=True)
        if len(magnitude) != 2:
            raise ValueError(f"magnitude must be a (low, high) pair, got {magnitude!r}")
        low, high = float(magnitude[0]), float(magnitude[1])
        # low > 0 keeps every drawn support entry nonzero, so codes have exactly k nonzeros.
        if not 0.0 < low <= high < float("inf"):
            raise ValueError(f"magnitude must satisfy 0 < low <= high < inf, got {magnitude!r}")
        self.magnitude = (low, high)
        self.noise_std = check_nonnegative("noise_std", noise_std)
        self.seed = check_nonnegative_int("seed", seed)
        self.d_in = self.n
        self.dictionary = spiked_dictionary(self.n, self.m, self.rho, self.seed)
        if not isinstance(centre, bool):
            raise TypeError(f"centre must be True or False, got {centre!r}")
        self.centre = centre
        self.mean = self.dictionary.sum(1) * (k / m) * (low + high) / 2 if centre else torch.zeros(n)
        self.batches_drawn = 0

    def _draw(self, batch_size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        batch_size = check_positive_int("batch_size", batch_size)
        # The k largest of m uniform keys are a uniformly random k-subset.
        support = torch.rand(batch_size, self.m, generator=gen).topk(self.k, dim=1).indices
        low, high = self.magnitude
        values = low + (high - low) * torch.rand(batch_size, self.k, generator=gen)
        codes = torch.zeros(batch_size, self.m).scatter_(1, support, values)
        x = codes @ self.dictionary.T - self.mean
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(batch_size, self.n, generator=gen)
        return x, codes

    def sample(self, batch_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A batch (x (B, n), codes (B, m)), determined by (the source's seed, `seed`); float32 CPU."""
        return self._draw(batch_size, _generator("sample", self.seed, check_nonnegative_int("seed", seed)))

    def next_batch(self, batch_size: int) -> Tensor:
        """The next streamed batch x (B, n); batch i depends only on (seed, i, batch_size)."""
        x, _ = self._draw(batch_size, _generator("stream", self.seed, self.batches_drawn))
        self.batches_drawn += 1
        return x

    def config(self) -> dict:
        """The constructor arguments (JSON-serialisable)."""
        return {
            "n": self.n,
            "m": self.m,
            "k": self.k,
            "rho": self.rho,
            "magnitude": list(self.magnitude),
            "noise_std": self.noise_std,
            "seed": self.seed,
            **({"centre": True} if self.centre else {}),  # absent when False: older saved states still load
        }

    def state_dict(self) -> dict:
        """Stream position plus the configuration it belongs to (JSON-serialisable)."""
        return {"batches_drawn": self.batches_drawn, "config": self.config()}

    def load_state_dict(self, state: dict) -> None:
        """Seek to a saved position; refuses a state saved by a differently configured source."""
        if not isinstance(state, dict) or "batches_drawn" not in state:
            raise ValueError("state must be a dict with key 'batches_drawn'")
        saved = state.get("config")
        if saved is not None and saved != self.config():
            raise ValueError(f"state was saved by a different source: {saved} != {self.config()}")
        drawn = state["batches_drawn"]
        if isinstance(drawn, bool) or not isinstance(drawn, int) or drawn < 0:
            raise ValueError(f"state['batches_drawn'] must be an int >= 0, got {drawn!r}")
        self.batches_drawn = drawn
