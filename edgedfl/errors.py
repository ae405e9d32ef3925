"""One error tree for all of edgedfl.

Every error edgedfl raises on purpose derives from :class:`EdgeDFLError`; each
leaf also subclasses the builtin a caller would naturally catch, so
``except ValueError`` keeps working for code that does not know edgedfl.

::

    EdgeDFLError
    ├── ConfigError                (ValueError)    a bad setting, names field and value
    ├── BackendUnavailable         (ImportError)   optional dependency missing; says what to install
    ├── ModelError                 (RuntimeError)
    │   └── ModelLoadError         (OSError)       model id / path / gguf cannot be loaded
    ├── AdapterError               (ValueError)    slot, mask or adapter shape problems
    ├── DataError                  (ValueError)    malformed JSONL / dataset rows, unknown task
    ├── CheckpointError            (RuntimeError)  no complete checkpoint, corrupt checkpoint
    ├── WireError                  (ValueError)    anything wrong with bytes that came off the wire
    │   ├── MalformedMessage                       cannot be parsed (truncated, bad header, bad JSON)
    │   ├── SchemaVersionError                     unknown wire schema version
    │   ├── IntegrityError                         content hash does not match the body
    │   ├── SignatureError                         signature missing or does not verify
    │   │   ├── UnknownSigner                      signed by a key nobody configured
    │   │   └── KeyChanged                         a node signs with another key than the one pinned (TOFU)
    │   ├── TensorValidationError                  names, dtypes, shapes, finiteness, norms
    │   ├── UnknownMask                            sparse update refers to a mask not (yet) held
    │   ├── PayloadTooLarge                        over a size limit (also raised before publishing)
    │   ├── ChunkError                             chunk out of bounds, inconsistent, or timed out
    │   ├── StaleRound                             message for a round that is already closed
    │   ├── SettingsMismatch                       hello / expert of a swarm with other settings (stale run)
    │   ├── NotAMember                             an expert from a node outside that slot's cluster
    │   └── DuplicateMessage                       (sender, round, seq) seen before
    ├── TopologyError              (ValueError)    bad task signature, unknown node, bad graph
    ├── AggregationError           (ValueError)    updates that cannot be combined
    │   ├── UpdateMismatch                         names, shapes, masks or weights do not fit together
    │   └── NonFiniteUpdate                        NaN / inf in an update (rejected, never averaged in)
    ├── TransportError             (ConnectionError)
    │   ├── BrokerUnavailable                      cannot reach / start the broker
    │   ├── NotConnected                           publish while the link is down and no queueing
    │   ├── NotAuthorized          (PermissionError) credentials or ACL refused by the broker
    │   ├── PublishRefused                         broker answered a publish with a failure code
    │   ├── PublishTimeout         (TimeoutError)  no PUBACK within the publish timeout
    │   └── InvalidTopic           (ValueError)    topic or filter that MQTT does not allow
    └── RoundError                 (RuntimeError)
        └── QuorumNotReached       (TimeoutError)  deadline passed without enough peers
"""

from __future__ import annotations


class EdgeDFLError(Exception):
    """Root of every error edgedfl raises on purpose."""


class ConfigError(EdgeDFLError, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


class BackendUnavailable(EdgeDFLError, ImportError):
    """An optional backend is not installed or not usable here; the message says what to install."""


class ModelError(EdgeDFLError, RuntimeError):
    """A problem with the base model."""


class ModelLoadError(ModelError, OSError):
    """The model could not be loaded from the given hub id, directory or GGUF file."""


class AdapterError(EdgeDFLError, ValueError):
    """Adapter slots, masks or shapes are inconsistent."""


class DataError(EdgeDFLError, ValueError):
    """Training or evaluation data is malformed or refers to an unknown task."""


class CheckpointError(EdgeDFLError, RuntimeError):
    """No complete checkpoint, or a checkpoint that fails its own checks."""


# --- wire -------------------------------------------------------------------


class WireError(EdgeDFLError, ValueError):
    """Bytes from the wire were rejected. Nothing of them reached a model."""


class MalformedMessage(WireError):
    """The bytes cannot be parsed as an edgedfl message."""


class SchemaVersionError(WireError):
    """The message uses a wire schema version this build does not speak."""


class IntegrityError(WireError):
    """The content hash in the envelope does not match the body."""


class SignatureError(WireError):
    """The message signature is missing or does not verify."""


class UnknownSigner(SignatureError):
    """The message is signed by a key that is not among the configured ones."""


class KeyChanged(SignatureError):
    """A node signs with another key than the one pinned at its first hello (trust on first use)."""


class TensorValidationError(WireError):
    """A tensor has an unexpected name, dtype, shape, non-finite value or too large a norm."""


class UnknownMask(WireError):
    """A sparse update refers to a mask id this receiver does not hold (yet)."""


class PayloadTooLarge(WireError):
    """A payload exceeds a size limit (the broker's, or a receiver's bound)."""


class ChunkError(WireError):
    """A chunk is out of bounds, inconsistent with its siblings, or its message timed out."""


class StaleRound(WireError):
    """The message belongs to a round that is already closed."""


class SettingsMismatch(WireError):
    """A hello or expert made under other swarm settings (another run's retained message): refused."""


class NotAMember(WireError):
    """An expert for a slot published by a node that is not a member of that slot's cluster: refused."""


class DuplicateMessage(WireError):
    """A message with this (sender, round, sequence) was already accepted."""


# --- topology / aggregation -------------------------------------------------


class TopologyError(EdgeDFLError, ValueError):
    """A task signature, clustering or neighbour graph input is invalid (wrong size, non-finite, unknown node)."""


class AggregationError(EdgeDFLError, ValueError):
    """Updates cannot be combined. ``neighbour`` is the index of the offending neighbour (None: own update)."""

    def __init__(self, message: str, *, neighbour: int | None = None) -> None:
        super().__init__(message)
        self.neighbour = neighbour


class UpdateMismatch(AggregationError):
    """Tensor names, shapes, masks or mixing weights do not fit together."""


class NonFiniteUpdate(AggregationError):
    """An update holds NaN or inf; it is rejected rather than averaged into the model."""


# --- transport ----------------------------------------------------------------


class TransportError(EdgeDFLError, ConnectionError):
    """The transport failed."""


class BrokerUnavailable(TransportError):
    """The broker cannot be reached or started."""


class NotConnected(TransportError):
    """The operation needs a live connection and there is none."""


class NotAuthorized(TransportError, PermissionError):
    """The broker refused the credentials, the certificate, or (ACL) the topic."""


class PublishRefused(TransportError):
    """The broker acknowledged a publish with a failure reason code (MQTT 5)."""


class PublishTimeout(TransportError, TimeoutError):
    """No acknowledgement for a QoS >= 1 publish within the timeout (it may still arrive later)."""


class InvalidTopic(TransportError, ValueError):
    """A topic name or filter that MQTT does not allow (wildcards in a topic, empty, NUL, ...)."""


# --- rounds -----------------------------------------------------------------


class RoundError(EdgeDFLError, RuntimeError):
    """A federated round could not complete."""


class QuorumNotReached(RoundError, TimeoutError):
    """The round deadline passed before a quorum of peers reported."""
