"""Benchmarks behind the performance page: ``python -m spanlib bench NAME``."""
