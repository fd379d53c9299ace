"""Warren for Python: run ansible-runner jobs on remote nodes of a Warren mesh.

Three ways in, all with ansible-runner's keywords, callbacks and return value:

- Unchanged code: once this package is installed, ``ansible_runner.run(...,
  via_receptor='node1')``, ``ansible_runner.run_async(...)`` and
  ``ansible_runner.interface.run(...)`` run the job on ``node1`` (the package registers
  itself as an ansible-runner plugin). Without ``via_receptor`` nothing changes.
- Explicit: :func:`warren.ansible.run` and :func:`warren.ansible.run_async`.
- asyncio: :func:`warren.aio.run`, awaitable, with ``async for event in job.events()`` and
  remote cancellation by ``task.cancel()``.

The client node runs inside this process (no ``warren`` binary is started): it links to
``receptor_peer`` (default ``localhost:8888``) with the identity in ``$WARREN_IDENTITY`` or
``~/.config/warren/identity.key``, as ``warren run`` does, and is shared by every job of the
process that names the same peer, identity and ``receptor_node_id``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["aio", "ansible", "errors", "__version__"]

# The submodules load on first use: `import ansible_runner` imports this package (its
# plugin), and must stay cheap.
_LAZY = {"aio", "ansible", "errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "__version__":
        from warren import _native

        return _native.VERSION
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
