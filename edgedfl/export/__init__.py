"""Export a device's experts for on-device runtimes.

``edgedfl.export.onnx``: base + every expert + the router as one ONNX model
(:func:`~edgedfl.export.onnx.export_onnx`), built from the plain-tensor
module in ``edgedfl.export.module``. Importing this package loads nothing
heavy; the submodules import torch.
"""
