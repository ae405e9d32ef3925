"""``edgedfl doctor [--broker URL] [--json]``: what this device can do, and the profile it picks.

Exit status 0 when nothing in the report's ``problems`` list, 1 otherwise, so
an install script can stop on a broken device.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default=None, help="also check that this broker accepts a connection "
                                                        "(mqtt://host:port[?protocol=311])")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--no-quant", action="store_true",
                        help="only report which quantization backends are installed (skip the training probes)")
    parser.add_argument("--timeout", type=float, default=3.0, help="broker connect timeout in seconds")


#: libraries that log warnings while the quantization probes run (load notices, per-call casts)
_CHATTY = ("torchao", "bitsandbytes", "torch", "transformers", "peft")


def run(args: argparse.Namespace) -> int:
    import logging

    from edgedfl.doctor import format_report, run_doctor

    if not args.verbose:
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.ERROR)

    report = run_doctor(args.broker, quant=not args.no_quant, broker_timeout=args.timeout)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        print(format_report(report))
    return 1 if report["problems"] else 0
