"""Shared test machinery: the one wait helper, the test stack, and a Hub/lab client."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
