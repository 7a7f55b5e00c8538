"""Shared test machinery: the one wait helper, the test stack, and a Hub/lab client."""
