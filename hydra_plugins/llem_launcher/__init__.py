"""llem's Hydra launchers: warm workers as local processes (llem_local) or containers (llem_container)."""
