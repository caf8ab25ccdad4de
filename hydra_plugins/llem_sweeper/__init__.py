"""llem's Hydra sweeper: campaign grids and backend-scoped sweeps, validated before anything runs."""
