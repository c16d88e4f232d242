"""Sequence-mixing ops. Each op folder holds the float reference (naive.py), the pure-PyTorch
parallel/chunked form, GPU kernels, and the dispatch in its __init__.py."""
