"""Warren's ansible-runner plugin (entry point group ``ansible_runner.plugins``).

ansible-runner 2.4 loads every plugin of that group while ``import ansible_runner`` runs,
after its ``interface`` module is complete, and then calls each plugin's
``status_handler`` and ``event_handler`` for every status change and event of every run.

Loading this module wraps ``ansible_runner.interface.run`` and ``run_async`` (and the same
names on the ``ansible_runner`` package) once: a call with ``via_receptor=`` runs the job
on that mesh node through :mod:`warren.ansible`; any other call goes to ansible-runner's own
function with exactly its arguments. Code that imported ``run`` from either place gets the
wrapper, since the plugin is loaded before ``import ansible_runner`` returns.

Nothing here may fail: an exception would break ``import ansible_runner`` for everyone.
The extension module loads only when a call names ``via_receptor``.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

_log = logging.getLogger("warren")

#: The keywords this plugin adds to run() and run_async().
RECEPTOR_KWARGS = ("via_receptor", "receptor_peer", "receptor_node_id", "receptor_timeout")

_NOTE = """

    Warren: with ``via_receptor='NODE'`` the job runs on that node of the mesh
    (``receptor_peer``: ``host:port``, ``receptor://host:port`` or a host, default
    ``localhost:8888``; ``receptor_node_id``: this client's node id, default a unique
    temporary one; ``receptor_timeout``: seconds to wait for the link and the node, default
    15). Without ``via_receptor`` this is ansible-runner's own function.
"""


def status_handler(runner_config: Any, status_data: dict) -> None:
    """Called by ansible-runner for every status change of every run: nothing to do."""


def event_handler(runner_config: Any, event_data: dict) -> None:
    """Called by ansible-runner for every event of every run: nothing to do."""


def _wrap(original: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "via_receptor" not in kwargs:
            return original(*args, **kwargs)
        if kwargs["via_receptor"] is None:
            # An explicit "no node": a local run; our keywords mean nothing to it.
            for key in RECEPTOR_KWARGS:
                kwargs.pop(key, None)
            return original(*args, **kwargs)
        if args:
            # ansible-runner's run() takes keywords only: let it say so.
            return original(*args, **kwargs)
        from warren import ansible

        return getattr(ansible, name)(**kwargs)

    wrapper.__doc__ = (original.__doc__ or "") + _NOTE
    wrapper.__warren_original__ = original  # type: ignore[attr-defined]
    return wrapper


def _install() -> None:
    interface = sys.modules.get("ansible_runner.interface")
    if interface is None:
        try:
            import ansible_runner.interface as interface  # noqa: F811
        except Exception:  # pragma: no cover - ansible-runner itself is broken
            _log.debug("ansible_runner.interface is not importable", exc_info=True)
            return
    package = sys.modules.get("ansible_runner")
    for name in ("run", "run_async"):
        original = getattr(interface, name, None)
        if original is None or hasattr(original, "__warren_original__"):
            continue
        wrapper = _wrap(original, name)
        setattr(interface, name, wrapper)
        if package is not None and getattr(package, name, None) is original:
            setattr(package, name, wrapper)


try:
    _install()
except Exception:  # pragma: no cover - never break `import ansible_runner`
    _log.warning("warren: could not extend ansible_runner.run", exc_info=True)
