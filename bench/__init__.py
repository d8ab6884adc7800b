"""Benchmarks of the service against the raw model and the seed systems' way of working
(`python -m bench`, `make bench`; see bench/README.md). They report; they never assert."""
