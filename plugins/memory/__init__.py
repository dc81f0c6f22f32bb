"""Memory plugin: persistent per-agent memory anchored to the chain."""
