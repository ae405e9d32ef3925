"""The frozen base: loading (``tiny``, the bundled SmolLM2, a hub id, a directory or a .gguf), the
quantization dispatcher, and prompt batching (:mod:`edgedfl.model.batching`) shared by training and routing."""
