"""Who takes part and what each knows: entities, their nets, data and metrics. Imports no simulator code."""
