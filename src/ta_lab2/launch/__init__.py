"""Child processes of a run: start them from a fork server (:mod:`.process`), run a plan of
them in dependency order with timeouts (:mod:`.schedule`), report what they did
(:mod:`.results`). Knows no builder, refresher or table."""
