"""Running jobs in warm workers: local processes or long-lived containers, one per routing key."""
