"""Test-session settings. One intra-op thread: the test problems are tiny, and on CI's 2 shared cores a
second thread only adds contention (tiny CPU models ran ~30x slower with 2 threads)."""
import torch

torch.set_num_threads(1)
