"""Experiments built on the library: the synthetic sweep and the replication of the paper."""
