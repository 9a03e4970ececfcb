"""The local stack for make demo, the tests, the benchmarks and the load test (not shipped)."""
