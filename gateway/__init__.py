"""Inference gateway: one stable signature per model, many interchangeable backends."""

__version__ = "0.1.0"
