"""Market-data providers: the synthetic simulator and the real feeds."""
