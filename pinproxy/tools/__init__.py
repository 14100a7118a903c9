"""Offline tooling: lint, live checks of real servers, pin suggestions, pinset YAML out."""
