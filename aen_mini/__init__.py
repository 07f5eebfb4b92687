"""aen-mini: Adaptive Elastic Net sparse autoencoders, small and readable."""
__version__ = "0.1.0"
