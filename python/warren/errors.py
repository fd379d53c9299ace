"""The exceptions a job raises before it starts, each naming the node or peer and what to
do. They derive from ansible-runner's ``AnsibleRunnerException``, so code that catches
ansible-runner's errors catches these too, and from the matching built-in class where one
fits (``ConnectionError``, ``PermissionError``, ``LookupError``).

Once a job has started, failures (a worker that breaks off, lost contact with the node)
do not raise: as with ansible-runner's own streaming, the run ends with status ``error``
and its ``job_explanation`` says why, and the artifacts received so far stay.
"""

from __future__ import annotations

from ansible_runner.exceptions import AnsibleRunnerException

__all__ = [
    "WarrenError",
    "PeerUnreachable",
    "PeerRefused",
    "KeyChanged",
    "UnknownNode",
    "NotOffered",
    "SubmitRefused",
    "IdentityError",
]


class WarrenError(AnsibleRunnerException):
    """A Warren job could not be started."""

    #: The target node (``via_receptor``), when the error is about it.
    node: str | None = None
    #: The peer dialled (``receptor_peer``).
    peer: str | None = None

    def __init__(self, message: str, *, node: str | None = None, peer: str | None = None):
        super().__init__(message)
        self.node = node
        self.peer = peer


class PeerUnreachable(WarrenError, ConnectionError):
    """Nothing answered at ``receptor_peer`` (or its TLS could not be set up)."""


class PeerRefused(WarrenError, PermissionError):
    """The peer refused this client's key: the message gives the flag that admits it."""


class KeyChanged(WarrenError):
    """A peer's or the target's key is not the one remembered: a possible impostor."""


class UnknownNode(WarrenError, LookupError):
    """No route to ``via_receptor`` through the peer."""


class NotOffered(WarrenError):
    """The target node does not offer the ``ansible-runner`` work type."""


class SubmitRefused(WarrenError, PermissionError):
    """The target refused the job (its access rules, limits or signature policy)."""


class IdentityError(WarrenError):
    """This client's identity, certificate or known-keys files are unusable."""


_HINTS = {
    "peer_unreachable": (
        PeerUnreachable,
        "Is a Warren node listening there? Pass receptor_peer='host:port' to dial another.",
    ),
    "peer_refused": (PeerRefused, None),
    "key_changed": (KeyChanged, None),
    "unknown_node": (
        UnknownNode,
        "Check the node id, and that the node is up and linked to the mesh "
        "(`warren status` on the peer lists the nodes it knows).",
    ),
    "not_offered": (
        NotOffered,
        "A node offers ansible-runner only where it finds a working one (its configured "
        "path, else PATH): install it there, or pick another node.",
    ),
    "submit_refused": (SubmitRefused, None),
    "identity": (IdentityError, None),
}


def from_native(kind: str, message: str, *, node: str | None, peer: str | None) -> Exception:
    """The exception for the extension's ``NativeError(kind, message)``."""
    if kind == "value":
        return ValueError(message)
    cls, hint = _HINTS.get(kind, (WarrenError, None))
    if hint:
        message = f"{message}\n{hint}"
    return cls(message, node=node, peer=peer)
