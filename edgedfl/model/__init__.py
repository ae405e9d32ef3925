"""The frozen base: loading (``tiny``, the bundled SmolLM2, a hub id, a directory or a .gguf), the
quantization dispatcher, where tensors live (:mod:`edgedfl.model.placement`: the model's device, one rule
for every path), and prompt batching (:mod:`edgedfl.model.batching`) shared by training and routing."""
