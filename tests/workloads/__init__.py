"""Test workload sources and their builder (see build.py)."""
