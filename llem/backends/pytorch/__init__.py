"""PyTorch/transformers backend."""
