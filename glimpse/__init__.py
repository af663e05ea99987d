"""Glimpse: parallel building blocks for scientific Python. See :mod:`glimpse.pools`."""
