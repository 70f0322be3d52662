"""AffectGPT in plain PyTorch/transformers: config and presets, frozen encoders, head, prompts, checkpoints."""
