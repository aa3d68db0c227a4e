"""Strata scheduler."""
