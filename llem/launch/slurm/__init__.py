"""The SLURM launcher's library side: options, grouping, the in-job callable, submit/wait/collect.

Import the submodules; this package imports nothing heavy (the launcher plugin's config reads `options`
at every app start).
"""
