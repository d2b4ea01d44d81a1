"""perceiver: prepare data for, train, evaluate and inspect Perceiver models."""

__version__ = "0.1.0"
