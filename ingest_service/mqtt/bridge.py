"""The MQTT bridge between the broker and the write path (`iot-platform mqtt` runs it: platform_cli/services.py).

Nothing the bridge acknowledged is lost:
- a persistent MQTT 5 session (clean start off, a fixed client id, a session expiry), so the broker
  keeps the subscriptions and queues messages while the bridge is away;
- manual acknowledgements (paho-mqtt's `manual_ack`): a message is acknowledged only after its rows
  are committed (and its result is queued for the results topic), and acknowledgements go out in
  the order the messages arrived (MQTT 5 section 4.6). A message taken but not acknowledged is
  redelivered to the session after a crash or a lost connection; the door answers a redelivery of a
  stored message from the ledger (door.py);
- a bounded in-flight window of MQTT_INFLIGHT messages taken and not acknowledged: the MQTT 5
  Receive Maximum asks the broker for it, and the bridge stops reading its socket when a broker
  sends past it (`_read`), so it holds (to one message) even against a broker that overshoots. While PostgreSQL is down
  each taken message waits and retries, no acknowledgement goes out, and the broker holds everything
  else until the database is back.

paho-mqtt runs on the asyncio event loop through its socket callbacks (on_socket_open & co., the
library's documented way to drive it from an external loop): one thread, no locks, and the write
path's group commit shares the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest_service.core.config import Settings
from ingest_service.mqtt.door import DatabaseUnavailable, Reply, open_door
from ingest_service.mqtt.topics import Route, Topics

log = logging.getLogger(__name__)

RETRY_MIN_SECONDS, RETRY_MAX_SECONDS = 0.2, 5.0  # a message waiting for the database
RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS = 0.5, 30.0
STATS_INTERVAL_SECONDS = 10.0
READ_BURST = 64  # packets read per socket-readable callback before other tasks get the loop
DRAIN_SECONDS = 30.0  # on SIGTERM: how long taken messages may take to finish before the bridge leaves
# CONNACK / SUBACK reason codes that no retry will fix: bad login, not authorised, banned.
FATAL_REASONS = {"Bad user name or password", "Not authorized", "Banned", "Client identifier not valid"}


class Door(Protocol):
    """What the bridge needs of the write path (door.MqttDoor; the benchmark's no-op door)."""

    async def handle(
        self, route: Route, topic: str, payload: bytes, content_type: str | None, correlation_data: bytes | None
    ) -> Reply: ...


class BridgeFailed(Exception):
    """The broker refused the bridge for a reason retrying does not fix (login, ACL)."""


@dataclass(eq=False, slots=True)
class Delivery:
    message: mqtt.MQTTMessage
    connection: int  # the connection it arrived on: its acknowledgement is valid only there
    done: bool = False


@dataclass
class Stats:
    received: int = 0
    stored: int = 0  # written to the ledger by this delivery
    replayed: int = 0  # already in the ledger (a redelivery): answered from it, nothing written
    refused: int = 0  # refused whole (too large, too many items): answered, nothing stored
    redelivered: int = 0  # arrived with the DUP flag: the broker had sent it before
    database_waits: int = 0  # attempts that found the database unavailable
    results_refused: int = 0  # result publishes the broker refused
    in_flight: int = 0  # messages being stored or answered
    max_in_flight: int = 0  # most QoS 1 messages taken and not yet acknowledged at once
    connections: int = 0


@dataclass
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(
                f"MQTT_URL must look like mqtt://user:password@host:1883 (or mqtts://), got {parts.scheme}://..."
            )
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )

    def __str__(self) -> str:
        who = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{who}{self.host}:{self.port}"


class Bridge:
    def __init__(self, settings: Settings, door: Door) -> None:
        assert settings.mqtt_url, "MQTT_URL is not set"
        self.settings = settings
        self.door = door
        self.broker = BrokerAddress.from_url(settings.mqtt_url)
        self.topics = Topics(settings.mqtt_topic_prefix)
        self.stats = Stats()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self.client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection = 0  # bumped on every connect and disconnect
        self._order: deque[Delivery] = deque()  # QoS 1 deliveries of this connection, in arrival order
        self._tasks: set[asyncio.Task[None]] = set()
        self._results_out: set[int] = set()  # result publishes the broker has not acknowledged yet
        self._lost = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._failure: BridgeFailed | None = None
        self._stopping = False
        self.window = max(1, min(settings.mqtt_inflight, 65535))
        self._database_down = False
        self._sock: Any = None
        self._paused = False

    # ---------------------------------------------------------------------------------------- #
    # paho on the event loop
    # ---------------------------------------------------------------------------------------- #

    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        assert self._loop is not None
        self._sock, self._paused = sock, False
        self._loop.add_reader(sock, self._read)

    def _on_socket_close(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        assert self._loop is not None
        self._sock, self._paused = None, False
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _read(self) -> None:
        """Read what the broker sent, one packet at a time, and stop reading once the broker has sent
        past the window: TCP backpressure then makes it hold every further message. A broker that
        honours the Receive Maximum never gets there (reading goes on for acknowledgements and
        pings); Mosquitto before 2.0.13 does, its send quota going wrong while acknowledgements flow
        and on a resumed backlog. paho's own loop_read cannot stop there: it reads as many packets as
        it has messages in flight, thousands of queued results under a backlog. Its one-packet read
        and error handling are paho internals, pinned in pyproject.toml; the window tests catch a
        change."""
        client = self.client
        for _ in range(READ_BURST):
            if len(self._order) > self.window:
                self._pause()
                return
            if self._sock is None:
                return
            rc = client._packet_read()
            if rc == mqtt.MQTT_ERR_AGAIN:
                return
            if rc != mqtt.MQTT_ERR_SUCCESS:
                client._loop_rc_handle(rc)
                return
        # More may be buffered where the socket's readiness does not show it (TLS): read on soon.
        assert self._loop is not None
        self._loop.call_soon(self._read)

    def _pause(self) -> None:
        if not self._paused and self._sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._sock)
            self._paused = True

    def _resume(self) -> None:
        if self._paused and self._sock is not None and len(self._order) <= self.window:
            assert self._loop is not None
            self._loop.add_reader(self._sock, self._read)
            self._paused = False

    def _on_socket_register_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        """Keepalive pings and their timeout: paho's periodic work when it does not own the loop."""
        while True:
            self.client.loop_misc()
            await asyncio.sleep(1.0)

    # ---------------------------------------------------------------------------------------- #
    # connection
    # ---------------------------------------------------------------------------------------- #

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.mqtt_session_expiry_seconds
        props.ReceiveMaximum = self.window
        return props

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("the broker refused the connection: %s", reason, extra={"fields": {"broker": str(self.broker)}})
            if str(reason) in FATAL_REASONS:
                self._failure = BridgeFailed(f"the broker refused the bridge's login: {reason}")
            return
        self._connection += 1
        self._order.clear()
        self.stats.connections += 1
        filters = self.topics.filters(self.settings.mqtt_shared_group or None)
        # Subscribing again on a session that has the subscriptions is harmless; a new session needs it.
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])
        log.info(
            "connected",
            extra={
                "fields": {
                    "broker": str(self.broker),
                    "session_present": flags.session_present,
                    "filters": filters,
                    "broker_receive_maximum": getattr(props, "ReceiveMaximum", None),
                }
            },
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode], props: Properties
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("the broker refused the subscriptions: %s", refused)
            self._failure = BridgeFailed(f"the broker refused the bridge's subscriptions: {refused}")
            self._lost.set()
            return
        log.info("subscribed", extra={"fields": {"client_id": self.settings.mqtt_client_id}})
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        # Deliveries of the old connection are never acknowledged on the new one: the broker
        # redelivers them (a packet id may by then name another message), and the door answers
        # those it has stored from the ledger.
        self._connection += 1
        self._order.clear()
        self._subscribed.clear()
        if not self._stopping:
            log.warning("disconnected from the broker: %s", reason, extra={"fields": {"broker": str(self.broker)}})
        self._lost.set()

    async def _connect(self) -> None:
        """Connect, retrying with backoff until the broker answers (or refuses the login: fatal)."""
        delay = RECONNECT_MIN_SECONDS
        while True:
            self._lost.clear()
            try:
                # Blocking TCP connect (paho's connect_timeout, 5 s): the bridge has nothing else to do
                # without its broker; CONNACK arrives on the event loop.
                self.client.connect(
                    self.broker.host,
                    self.broker.port,
                    keepalive=self.settings.mqtt_keepalive_seconds,
                    clean_start=False,
                    properties=self._connect_properties(),
                )
            except (OSError, ssl.SSLError) as exc:
                log.warning("cannot reach the broker: %s; retrying in %.1f s", exc, delay)
            else:
                subscribed = asyncio.ensure_future(self._subscribed.wait())
                lost = asyncio.ensure_future(self._lost.wait())
                await asyncio.wait([subscribed, lost], return_when=asyncio.FIRST_COMPLETED)
                subscribed.cancel()
                lost.cancel()
                if self._failure is not None:
                    raise self._failure
                if self._subscribed.is_set():
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    # ---------------------------------------------------------------------------------------- #
    # messages
    # ---------------------------------------------------------------------------------------- #

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self._stopping:
            return  # not acknowledged: the broker keeps it for the next session of this client id
        delivery = Delivery(message, self._connection)
        if message.qos > 0:
            self._order.append(delivery)
        stats = self.stats
        stats.received += 1
        stats.redelivered += message.dup
        assert self._loop is not None
        task = self._loop.create_task(self._process(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Taken and not yet acknowledged: bounded by the Receive Maximum the broker honours.
        stats.max_in_flight = max(stats.max_in_flight, len(self._order))

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, props: Properties
    ) -> None:
        self._results_out.discard(mid)
        if reason.is_failure:  # stored all the same: the device misses this answer (e.g. the ACL)
            self.stats.results_refused += 1
            log.error("the broker refused a result: %s", reason)

    async def _process(self, delivery: Delivery) -> None:
        message = delivery.message
        topic = message.topic
        route = self.topics.parse(topic)
        if route is None:  # only what the filters match arrives; a broker bug must not stall the window
            log.error("message on a topic outside the scheme, dropped", extra={"fields": {"topic": topic[:200]}})
            self._finish(delivery)
            return
        props = message.properties
        content_type = getattr(props, "ContentType", None)
        correlation = getattr(props, "CorrelationData", None)
        reply = await self._store(route, topic, message.payload, content_type, correlation)
        if delivery.connection != self._connection:
            return  # the broker redelivers it on the new connection; that delivery answers
        result_props = Properties(PacketTypes.PUBLISH)
        result_props.ContentType = "application/json"
        if correlation is not None:
            result_props.CorrelationData = correlation
        # Queued before the acknowledgement, not waited for: the rows are what the acknowledgement
        # promises. A result lost with the bridge (a crash before the broker took it) is not lost for
        # good: the device publishes the message again and gets the stored results (a replay).
        info = self.client.publish(self.topics.results(route), reply.payload, qos=1, properties=result_props)
        self._results_out.add(info.mid)
        self._finish(delivery)

    async def _store(
        self, route: Route, topic: str, payload: bytes, content_type: str | None, correlation: bytes | None
    ) -> Reply:
        """The door's answer; while the database is unavailable, wait and try again (the message
        holds its place in the window, so the broker keeps the rest)."""
        delay = RETRY_MIN_SECONDS
        while True:
            try:
                reply = await self.door.handle(route, topic, payload, content_type, correlation)
            except DatabaseUnavailable as exc:
                self.stats.database_waits += 1
                if not self._database_down:
                    self._database_down = True
                    self.stats.in_flight = len(self._tasks)
                    fields = {**asdict(self.stats), "error": str(exc)[:200]}
                    log.warning(
                        "database unavailable: holding the messages taken, taking no more", extra={"fields": fields}
                    )
            except Exception:
                # A bug, never bad input (the write path stores that as errors): keep the message
                # unacknowledged rather than lose it, and say so loudly.
                log.exception("storing a message failed; retrying", extra={"fields": {"topic": topic[:200]}})
            else:
                if self._database_down:
                    self._database_down = False
                    log.warning("database available again", extra={"fields": asdict(self.stats)})
                if reply.replayed:
                    self.stats.replayed += 1
                elif reply.stored:
                    self.stats.stored += 1
                else:
                    self.stats.refused += 1
                return reply
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _finish(self, delivery: Delivery) -> None:
        """Acknowledge every finished delivery at the head of the arrival order."""
        delivery.done = True
        order = self._order
        while order and order[0].done:
            head = order.popleft()
            if head.connection == self._connection:
                self.client.ack(head.message.mid, head.message.qos)
        self._resume()

    # ---------------------------------------------------------------------------------------- #
    # run
    # ---------------------------------------------------------------------------------------- #

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_SECONDS)
            self.stats.in_flight = len(self._tasks)
            log.info("mqtt bridge stats", extra={"fields": asdict(self.stats)})

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        helpers = [asyncio.create_task(self._misc_loop()), asyncio.create_task(self._stats_loop())]
        try:
            await self._stay_connected(stop)
        finally:
            await self._leave()
            for task in helpers:
                task.cancel()
            self.stats.in_flight = len(self._tasks)
            log.info("mqtt bridge stopped", extra={"fields": asdict(self.stats)})

    async def _stay_connected(self, stop: asyncio.Event) -> None:
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                connecting = asyncio.ensure_future(self._connect())
                await asyncio.wait([connecting, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not connecting.done():
                    connecting.cancel()
                    return
                connecting.result()  # BridgeFailed propagates
                lost = asyncio.ensure_future(self._lost.wait())
                await asyncio.wait([lost, stopped], return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                if self._failure is not None:
                    raise self._failure
        finally:
            stopped.cancel()

    async def _leave(self) -> None:
        """Take no more messages, let those taken finish (stored, answered, acknowledged), then
        disconnect keeping the session: what arrived meanwhile waits at the broker."""
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=DRAIN_SECONDS)
            for task in pending:  # still waiting for the database: unacknowledged, so redelivered later
                task.cancel()
        # Results queued in paho (it keeps at most the broker's Receive Maximum unacknowledged) go out
        # before the DISCONNECT, which would drop them.
        deadline = time.monotonic() + DRAIN_SECONDS
        while self._results_out and self.client.is_connected() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.client.is_connected():
            self._lost.clear()
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 5)


async def serve(settings: Settings, database_url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_door(settings, database_url) as door:
        await Bridge(settings, door).run(stop)
