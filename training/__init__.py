"""Offline training of the Human Numbers GRU models into a model store."""
