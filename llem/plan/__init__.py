"""Campaign planning: expand grids and sweeps into validated jobs, order them, keep the manifest."""
