"""Synthetic scenes and perfect detectors for tests and benchmarks; the production path does not use them."""
