"""The next-word prediction service."""
