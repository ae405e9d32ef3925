"""The transport and netlab layers never import torch (a phone speaks them without Python)."""

from __future__ import annotations

import subprocess
import sys

from edgedfl import brokers, protocol, transport


def test_transport_and_netlab_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import edgedfl.transport.base, edgedfl.transport.memory, edgedfl.transport.mqtt\n"
        "import edgedfl.brokers.launch, edgedfl.brokers.pki, edgedfl.transport.inbox\n"
        "import edgedfl.netlab\n"
        "from edgedfl.transport import MqttTransport\nfrom edgedfl.brokers import MosquittoBroker\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_lazy_exports_resolve() -> None:
    for package in (transport, brokers, protocol):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)
