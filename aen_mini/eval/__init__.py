"""Evaluation: metrics, the exact solver, L1 calibration, spliced LM metrics, feature dashboards."""
