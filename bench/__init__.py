"""vmdnet benchmarks (`make bench`): each module prints a table and saves JSON
under bench/results/.  Numbers are reported, never asserted by tests."""
