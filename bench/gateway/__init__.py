"""The pieces of bench/gateway_overhead.py: load generator, server processes, report."""
