"""Runnable experiments and benchmarks: each writes its results (JSON/CSV/PNG) where its
``--help`` says; run them as ``python -m experiments.<name>``."""
