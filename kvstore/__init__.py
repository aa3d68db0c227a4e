"""Strata kvstore."""
