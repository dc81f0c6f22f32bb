"""othentic integration."""
