"""Exploration: views of a recording, figures, and the explorers (widgets)."""
