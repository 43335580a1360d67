"""What a bar builder's or EMA refresher's process runs on: per-id work units and their
results (:mod:`.units`), progress display (:mod:`.progress`), and the plumbing of its command
— options, locks, summary JSON, exit code (:mod:`.command`)."""
