"""Training: what trains when, and the signals that decide it."""
