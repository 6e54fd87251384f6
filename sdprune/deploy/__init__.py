"""Deployment: ONNX export verified against PyTorch, int8 quantization, ONNX Runtime's
mobile format, running and timing the exported files.

Modules here import torch, onnx and onnxruntime inside the functions that use them, so
that building the command line (``sdprune --help``) does not pay for loading them.
"""
