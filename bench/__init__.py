"""Benchmark harness: ``make bench`` measures the engine next to arq and DBOS Transact."""
