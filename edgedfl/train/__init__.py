"""Local training, evaluation and atomic checkpoints of one device's adapter."""
