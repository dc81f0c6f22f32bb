"""Fakes of external services for tests (one module per service; the integrations' fakes share ``base.py``,
which injects timeouts, 5xx and malformed answers)."""
