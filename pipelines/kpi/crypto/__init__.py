"""The crypto workflow."""
