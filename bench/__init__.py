"""On-demand benchmarks of the proxy (bench/README.md); `bench/run` is the entry point."""
