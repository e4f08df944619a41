"""Test suites. A package only so ``tests.support`` can be imported by every suite."""
