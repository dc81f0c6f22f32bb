"""lagrange integration."""
