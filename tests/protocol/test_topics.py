"""Topic names of the protocol: building, parsing, and refusing names that would break MQTT."""

from __future__ import annotations

import pytest

from edgedfl.errors import ConfigError, InvalidTopic
from edgedfl.protocol.topics import ParsedTopic, Topics, validate_name
from edgedfl.transport.base import topic_matches, validate_filter, validate_topic


def test_build_and_parse_round_trip() -> None:
    t = Topics("lab")
    cases = {
        t.presence("n1"): ParsedTopic("presence", node="n1"),
        t.hello("n1"): ParsedTopic("hello", node="n1"),
        t.update(3, "n1"): ParsedTopic("update", node="n1", slot=3),
        t.expert(0, "n1"): ParsedTopic("expert", node="n1", slot=0),
        t.ack("n1", "n-2.x_y"): ParsedTopic("ack", node="n-2.x_y", to="n1"),
    }
    for topic, parsed in cases.items():
        validate_topic(topic)
        assert t.parse(topic) == parsed
    assert t.update(3, "n1") == "edgedfl/lab/update/3/n1"
    for f in (
        t.all_presence(),
        t.all_hello(),
        t.slot_updates(3),
        t.all_experts(),
        t.all_acks(),
        t.acks_to("n1"),
        t.everything(),
    ):
        validate_filter(f)
    assert topic_matches(t.slot_updates(3), t.update(3, "n1"))
    assert not topic_matches(t.slot_updates(3), t.update(4, "n1"))
    assert topic_matches(t.all_acks(), t.ack("n2", "n1"))
    # a node subscribes to the acks addressed to it, and gets no other node's
    assert t.ack("n2", "n1") == "edgedfl/lab/ack/n2/n1"
    assert topic_matches(t.acks_to("n2"), t.ack("n2", "n1"))
    assert not topic_matches(t.acks_to("n3"), t.ack("n2", "n1"))


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x" * 129, "sp ace", "é", None])
def test_bad_names_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError):
        validate_name(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Topics("lab").presence(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "topic",
    [
        "edgedfl/other/presence/n1",
        "edgedfl/lab/presence",
        "edgedfl/lab/presence/n1/extra",
        "edgedfl/lab/update/01/n1",
        "edgedfl/lab/update/-1/n1",
        "edgedfl/lab/update/x/n1",
        "edgedfl/lab/expert/99999999999/n1",
        "edgedfl/lab/expert/2",
        "edgedfl/lab/unknown/n1",
        "edgedfl/lab/ack/a b",
    ],
)
def test_parse_refuses_foreign_topics(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        Topics("lab").parse(topic)


def test_bad_slot_and_swarm() -> None:
    with pytest.raises(ConfigError):
        Topics("lab").update(-1, "n1")
    with pytest.raises(ConfigError):
        Topics("lab").expert(True, "n1")
    with pytest.raises(ConfigError):
        Topics("a/b")
