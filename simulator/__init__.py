"""How a Veil scenario runs: schema, CLI, the Flower apps, stages, pool and run directory."""
