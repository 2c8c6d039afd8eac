"""Benchmarks: charlm against an optional PyTorch peer, measured side by side in one process."""
