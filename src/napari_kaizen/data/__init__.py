"""Synthetic micrographs (paired channels + instance labels) and napari sample data."""

from .synthetic import (
    SyntheticField,
    SyntheticStack,
    SynthParams,
    params_to_dict,
    random_params,
    synthesize,
    synthesize_stack,
)

__all__ = [
    "SynthParams",
    "SyntheticField",
    "SyntheticStack",
    "params_to_dict",
    "random_params",
    "synthesize",
    "synthesize_stack",
]
