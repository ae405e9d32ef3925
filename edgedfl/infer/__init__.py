"""Torch-free inference: run an exported routed model with ONNX Runtime and ``tokenizers``.

Imports numpy, onnxruntime and tokenizers only (never torch, never
transformers), so a device that cannot install torch runs the model; a test
keeps it so.
"""

from __future__ import annotations

from edgedfl.infer.runtime import Generation, OnnxLM

__all__ = ["Generation", "OnnxLM"]
