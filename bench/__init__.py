"""Strata bench."""
