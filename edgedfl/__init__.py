"""edgedfl: devices fine-tune one language model together, with no server.

The heavy parts (torch, transformers, peft) load lazily: importing ``edgedfl``
or its wire and transport layers never imports torch.
"""

from edgedfl._version import __version__
from edgedfl.errors import EdgeDFLError

__all__ = ["EdgeDFLError", "__version__"]
