"""Results devices of one process compute alike are computed once and shared (a host of hundreds of devices)."""

from __future__ import annotations

import threading
import time

from edgedfl.node.shared import digest, shared_result


def test_equal_inputs_are_computed_once_while_the_others_wait_and_other_inputs_apart() -> None:
    calls: list[str] = []

    def make(tag: str) -> object:
        calls.append(tag)
        time.sleep(0.05)  # long enough for every other thread to arrive while it computes
        return object()

    key = digest("graph", ["a", "b", "c"], 3)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(shared_result(key, lambda: make("abc"))))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["abc"] and len(results) == 20 and all(r is results[0] for r in results)
    other = shared_result(digest("graph", ["a", "b", "d"], 3), lambda: make("abd"))
    assert calls == ["abc", "abd"] and other is not results[0]
    assert digest("graph", ["a", "b"], 3) != digest("graph", ["a", "b"], 4)
