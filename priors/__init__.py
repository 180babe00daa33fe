"""Frozen pretrained networks and score distillation: one file per prior."""
