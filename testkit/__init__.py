"""Helpers that start the real stack and stand in for remote IIIF servers (served from local
files): shared by the tests (server/tests), the benchmarks (bench/) and scripts/."""
