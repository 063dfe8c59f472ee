"""Data-making tools that sit outside the training library: the realistic synthetic head."""
