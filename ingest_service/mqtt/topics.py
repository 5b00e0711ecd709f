"""The MQTT topic scheme of the door, under a configurable prefix (`MQTT_TOPIC_PREFIX`, default `devices`):

{prefix}/{device_id}/telemetry   a device publishes telemetry (one JSON event, an array or NDJSON)
{prefix}/{serial}/startup        a device publishes its device_startup
{prefix}/{id}/results            the bridge publishes each message's results (id: the topic's
                                 device id or serial, so a device reads them before it has an id)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

Kind = Literal["telemetry", "startup"]
KINDS: tuple[Kind, ...] = ("telemetry", "startup")


@dataclass(frozen=True, slots=True)
class Route:
    """What a message's topic says: which door it came in by, and whose it claims to be."""

    kind: Kind
    ident: str  # the device id (telemetry) or serial (startup) as written in the topic


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = "devices"

    def filters(self, shared_group: str | None) -> list[str]:
        """The subscriptions: shared (`$share/{group}/...`, MQTT 5) so several bridges split the load."""
        share = f"$share/{shared_group}/" if shared_group else ""
        return [f"{share}{self.prefix}/+/{kind}" for kind in KINDS]

    def parse(self, topic: str) -> Route | None:
        """The route of a topic the bridge subscribed to; None for anything else."""
        head, sep, rest = topic.partition(self.prefix + "/")
        if head or not sep:
            return None
        ident, sep, kind = rest.partition("/")
        if not ident or not sep or kind not in KINDS:
            return None
        return Route(cast(Kind, kind), ident)

    def results(self, route: Route) -> str:
        return f"{self.prefix}/{route.ident}/results"

    def telemetry(self, device_id: int | str) -> str:
        return f"{self.prefix}/{device_id}/telemetry"

    def startup(self, serial: str) -> str:
        return f"{self.prefix}/{serial}/startup"
