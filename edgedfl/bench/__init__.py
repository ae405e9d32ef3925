"""Benchmarks that run through the public API (emulated swarms) and write committed results."""
