"""Training: the plain-PyTorch loop and one-stage runner (Ray Train wiring lives in trainer.py)."""
