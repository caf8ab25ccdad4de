"""One experiment, measured: the harness, its metrics and the result.json schema."""
