"""Benchmarks (`make bench`): each compares ours with the upstream Go tool on the same input."""
