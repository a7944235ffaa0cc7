"""resetwatch's tests (a package so that ``tests.lab`` is importable from tests and scripts)."""
