"""Training data: user examples (JSONL, Hugging Face datasets), the built-in offline
multi-task suite, and the partitioner that gives each device its share.

Stdlib and numpy only: this package never imports torch (a phone-side tool or
the CLI can use it without a deep-learning stack), and imports ``datasets``
only when asked to load from the hub.
"""

from __future__ import annotations

from edgedfl.data.examples import (
    Example,
    from_hf_dataset,
    is_datasets_available,
    load_hf_dataset,
    load_jsonl,
    save_jsonl,
)
from edgedfl.data.partition import MODES, DeviceData, partition, partition_suite
from edgedfl.data.sources import load_examples
from edgedfl.data.tasks import (
    DEFAULT_SUITE,
    DEFAULT_TEST_SIZE,
    DEFAULT_TRAIN_SIZE,
    SPLITS,
    TASKS,
    Task,
    format_prompt,
    get_task,
    load_task,
    suite,
)

__all__ = [
    "DEFAULT_SUITE",
    "DEFAULT_TEST_SIZE",
    "DEFAULT_TRAIN_SIZE",
    "MODES",
    "SPLITS",
    "TASKS",
    "DeviceData",
    "Example",
    "Task",
    "format_prompt",
    "from_hf_dataset",
    "get_task",
    "is_datasets_available",
    "load_examples",
    "load_hf_dataset",
    "load_jsonl",
    "load_task",
    "partition",
    "partition_suite",
    "save_jsonl",
    "suite",
]
