"""The runners (``run_all_bar_builders``, ``run_all_ema_refreshes``, ``run_daily_refresh``):
which builder and refresher children a run starts, in what order, with which options
(:mod:`.plan`), and running them under the families' locks (:mod:`.run`)."""
