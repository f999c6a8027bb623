"""Benchmarks, load tests, the previous design's peer, and latency history (SPEC §8)."""
