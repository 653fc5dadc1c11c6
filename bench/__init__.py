"""roomwarden benchmarks (issue 7). Not part of the test suite: run `bench/run` (see README.md here)."""
