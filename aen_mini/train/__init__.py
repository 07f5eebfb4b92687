"""Training: the loop, the fast step, the parallel strategies, resampling, the batched grid trainer."""
