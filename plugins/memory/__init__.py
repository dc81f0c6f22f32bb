"""Memory plugin: persistent per-agent memory anchored to the chain."""

__version__ = "0.1.0"
