"""YAML presets (``paper``, ``release``, ``cpu``), shipped as package data."""
