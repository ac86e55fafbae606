"""Prompt tuning (Lester et al., 2021) for frozen T5 models on a t5x-compatible JAX/Flax stack."""

__version__ = "0.1.0"
