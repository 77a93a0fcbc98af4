"""Which connector kinds exist: the only place the core learns of them.

Each source, destination and channel kind is one module that declares its pydantic config model
(a subclass of `SourceSettings`, `DestinationSettings` or `ChannelSettings` with
`kind: Literal[...]`) and a factory, and calls `register` when imported. The core (config loading,
sync, delivery, check-config) asks `kinds(role)` and never imports a concrete connector.

Kinds come from three places, loaded once:
- the built-in modules listed below;
- the `casebridge.connectors` entry-point group, for packaged third-party kinds;
- `$CASEBRIDGE_PLUGINS`, comma-separated module names, for a district's own module that is not a
  package (and for tests that run the CLI in a subprocess).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import BaseModel

Role = Literal["source", "destination", "channel"]
ENTRY_POINT_GROUP = "casebridge.connectors"
PLUGINS_ENV = "CASEBRIDGE_PLUGINS"

BUILTIN_MODULES = (
    "connectors.sources.oneroster_csv",
    "connectors.sources.sis_csv",
    "connectors.sources.oneroster_rest",
    "connectors.sources.edfi",
    "connectors.destinations.file",
    "connectors.destinations.webhook",
    "connectors.destinations.planner",
    "connectors.destinations.sheets",
    "connectors.destinations.zendesk",
    "connectors.destinations.jira",
    "connectors.destinations.slack",
    "connectors.destinations.teams",
    "connectors.destinations.email",
    "connectors.channels.file",
    "connectors.channels.twilio_sms",
    "connectors.channels.smtp_email",
)


@dataclass(frozen=True)
class ConnectorKind:
    role: Role
    kind: str
    config: type[BaseModel]
    # (settings, config) -> the connector; sources return a `connectors.base.BuiltSource`.
    factory: Callable[[Any, Any], Any]
    summary: str
    # Destinations and channels: "provider_key", "stored_link" or "none" (connectors/base.py).
    idempotency: str | None = None


_KINDS: dict[Role, dict[str, ConnectorKind]] = {"source": {}, "destination": {}, "channel": {}}
_loaded = False


def register(
    role: Role,
    kind: str,
    config: type[BaseModel],
    factory: Callable[[Any, Any], Any],
    idempotency: str | None = None,
) -> None:
    """Make `kind` usable in the configuration's `sources`, `destinations` or `channels`."""
    known = _KINDS[role].get(kind)
    if known is not None and known.config is not config:
        raise ValueError(f"{role} kind {kind!r} is already registered by {known.config.__module__}")
    summary = (config.__doc__ or "").strip().splitlines()[0] if config.__doc__ else ""
    if role != "source" and idempotency not in ("provider_key", "stored_link", "none"):
        raise ValueError(f"{role} kind {kind!r} must declare its idempotency")
    _KINDS[role][kind] = ConnectorKind(role, kind, config, factory, summary, idempotency)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(module)


def kinds(role: Role) -> dict[str, ConnectorKind]:
    """Every registered kind for `role`, by its `kind` name."""
    _load()
    return dict(_KINDS[role])


def lookup(role: Role, kind: str) -> ConnectorKind:
    found = kinds(role).get(kind)
    if found is None:
        raise KeyError(f"no {role} kind {kind!r}; known: {', '.join(sorted(kinds(role)))}")
    return found
