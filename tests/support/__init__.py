"""Helpers shared by several test suites (one copy, imported as ``tests.support.*``)."""
