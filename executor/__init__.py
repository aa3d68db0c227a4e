"""Strata executor."""
