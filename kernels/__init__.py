"""Strata kernels."""
