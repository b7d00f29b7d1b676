"""Code only the tests and the benchmarks use: references, synthetic data, shortcuts."""
