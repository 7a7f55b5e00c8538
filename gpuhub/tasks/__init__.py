"""Invoke tasks, grouped by concern; ``tasks.py`` at the top assembles them."""
