"""llem's SLURM launcher: `hydra/launcher=llem_slurm`."""
