"""Baselines that need no training loop (CCA on encoder features)."""
