"""VTA-style accelerator target (simulated)."""
