"""Every use of ipyparallel's private internals, in one place. Checked on ipyparallel 8.6 to 9.2.

``tests/test_compat.py`` calls :func:`missing` so an upgrade that removes one fails loudly there.
"""

from __future__ import annotations

_URL_KEYS = ("control", "task", "mux", "iopub", "notification", "registration", "broadcast")


def connection_info(client) -> dict:
    """The connection info a client was made with, as ``ipyparallel.Client`` takes it back.

    Private: ``Client._config``; ipyparallel keeps no public copy of it, and a pool made from a
    client needs it to pickle to the same controller.
    """
    config = dict(client._config)
    for key in _URL_KEYS:
        if isinstance(config.get(key), str):
            config[key] = int(config[key].rsplit(":", 1)[1])
    return config


def controller_address(client) -> str:
    """``host:port`` of the controller's registration socket (same private ``Client._config``)."""
    config = dict(client._config)
    interface, port = config.get("interface"), config.get("registration")
    if not interface or port is None:
        return ""
    port = int(str(port).rsplit(":", 1)[-1])
    return f"{interface.split('://', 1)[-1]}:{port}"


def engine_ids_by_uuid(client) -> dict[str, int]:
    """Each registered engine's id by its uuid. Private: ``Client._engines`` (id -> uuid).

    Errors name a dead engine by uuid only, after its id is gone from ``client.ids``.
    """
    return {uuid: engine for engine, uuid in dict(client._engines).items()}


def prepickled(func):
    """``func`` pickled once, to send with many tasks, as ipyparallel's own ``map`` sends its function.

    Semi-private: ``ipyparallel.serialize.PrePickled`` (not in ipyparallel's documentation).
    """
    from ipyparallel.serialize import PrePickled

    return PrePickled(func)


def send_task(view, func, args: tuple):
    """Send ``func(*args)`` to the scheduler of a load-balanced ``view``, as ``view.apply_async``
    does, but without building an ``AsyncResult`` or the view's own bookkeeping (about half the
    cost of a task in the caller). Returns the reply's future, whose result is the task's
    value, or the error that ended it as a value (``RemoteError``, ``EngineError``, ``TaskAborted``).

    Public: ``Client.send_apply_request``, "the principal method with which all engine execution is
    performed by views". Private: the view's task socket ``View._socket``.
    """
    # The metadata LoadBalancedView.apply_async sends with a task when no flag is set.
    metadata = {"after": [], "follow": [], "timeout": None, "targets": [], "retries": 0, "label": None}
    return view.client.send_apply_request(view._socket, func, args, {}, metadata=metadata)


def send_direct(view, engine: int, func, args: tuple):
    """Send ``func(*args)`` straight to ``engine``'s queue through a ``DirectView``'s socket, as
    ``view.apply_async`` does for one engine, without an ``AsyncResult``. Returns the reply's
    future, as :func:`send_task` does. Raises ``KeyError`` if the engine is no longer registered.

    Same public ``Client.send_apply_request``; private: ``View._socket`` and ``Client._engines``,
    which gives the engine's address (its uuid).
    """
    ident = view.client._engines[engine].encode("utf8")
    return view.client.send_apply_request(view._socket, func, args, {}, metadata={"label": None}, ident=ident)


def guarded_launch_config(guard: list[str]):
    """A ``Cluster`` config that starts the controller and each engine under ``guard``.

    Private in spirit: ``ipcontroller_cmd_argv``/``ipengine_cmd_argv`` are undocumented
    module constants of ``ipyparallel.cluster.launcher``.
    """
    from ipyparallel.cluster.launcher import ipcontroller_cmd_argv, ipengine_cmd_argv
    from traitlets.config import Config

    config = Config()
    config.LocalControllerLauncher.controller_cmd = [*guard, *ipcontroller_cmd_argv]
    config.LocalEngineLauncher.engine_cmd = [*guard, *ipengine_cmd_argv]
    return config


def engine_processes(cluster) -> list:
    """The psutil processes of a ``Cluster``'s engine launchers.

    Private: ``EngineSetLauncher.launchers`` and ``LocalProcessLauncher.process``; a
    ``Cluster`` says how many engines it started, not which are still alive.
    """
    return [
        launcher.process
        for engine_set in cluster.engines.values()
        for launcher in getattr(engine_set, "launchers", {}).values()
        if getattr(launcher, "process", None) is not None
    ]


def controller_and_engine_processes(cluster) -> list:
    """The psutil processes of a ``Cluster``'s controller and engine launchers (same private names)."""
    controller = getattr(cluster.controller, "process", None) if cluster.controller is not None else None
    return ([controller] if controller is not None else []) + engine_processes(cluster)


def engine_lost_controller(app) -> bool:
    """Whether an ``IPEngine`` app stopped because it heard no heartbeat from its controller for
    ``max_heartbeat_misses`` checks in a row. Private: ``IPEngine._hb_missed_beats``."""
    misses = app.max_heartbeat_misses
    return misses > 0 and getattr(app, "_hb_missed_beats", 0) >= misses


def missing() -> list[str]:
    """The private names this module relies on that the installed ipyparallel lacks."""
    import ipyparallel
    from ipyparallel.cluster import launcher

    gone = [
        f"ipyparallel.cluster.launcher.{name}"
        for name in ("ipcontroller_cmd_argv", "ipengine_cmd_argv")
        if not hasattr(launcher, name)
    ]
    if not hasattr(ipyparallel.serialize, "PrePickled"):
        gone.append("ipyparallel.serialize.PrePickled")
    if not hasattr(ipyparallel.Client, "send_apply_request"):
        gone.append("ipyparallel.Client.send_apply_request")
    from ipyparallel.engine.app import IPEngine

    for owner, name in (
        (IPEngine, "_hb_missed_beats"),
        (launcher.LocalEngineSetLauncher, "launchers"),
        (launcher.LocalProcessLauncher, "process"),
        (ipyparallel.Client, "_config"),
        (ipyparallel.Client, "_engines"),
        (ipyparallel.client.view.View, "_socket"),
    ):
        if name not in _trait_and_attribute_names(owner):
            gone.append(f"{owner.__module__}.{owner.__qualname__}.{name}")
    return gone


def _trait_and_attribute_names(cls) -> set[str]:
    names = set(dir(cls))
    if hasattr(cls, "class_trait_names"):
        names |= set(cls.class_trait_names())
    return names
