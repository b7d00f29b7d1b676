"""Plain NumPy references and synthetic data shared by the tests and the benchmarks."""
