"""eigenda integration."""
