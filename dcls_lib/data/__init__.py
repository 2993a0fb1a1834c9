"""Datasets: SynthClick (generated, with known attention maps)."""

from .synthclick import SynthClick

__all__ = ["SynthClick"]
