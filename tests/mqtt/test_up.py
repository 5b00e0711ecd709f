"""`make up` (iot-platform up) starts the MQTT door when MQTT_URL is set, and its banner says so."""

from __future__ import annotations

from ingest_service.core.config import Settings
from platform_cli.up import start_doors

API = "http://127.0.0.1:8000"


def _spawned(settings: Settings) -> tuple[str, list[list[str]]]:
    commands: list[list[str]] = []
    banner = start_doors(settings, API, lambda name, cmd: commands.append([name, *cmd]))
    return banner, commands


def test_without_mqtt_url_only_http_is_on() -> None:
    banner, commands = _spawned(Settings(dev_mode=True, mqtt_url=None))
    assert commands == []
    assert banner == f"HTTP {API}/ingest; MQTT off (set MQTT_URL)"


def test_with_mqtt_url_the_bridge_starts_and_the_banner_hides_the_password() -> None:
    banner, commands = _spawned(Settings(dev_mode=True, mqtt_url="mqtt://iot-bridge:s3cret@127.0.0.1:1883"))
    assert [c[0] for c in commands] == ["mqtt"]
    assert commands[0][-3:] == ["platform_cli", "mqtt", "--no-migrate"]
    assert "MQTT mqtt://iot-bridge@127.0.0.1:1883 devices/+/telemetry, devices/+/startup" in banner
    assert "s3cret" not in banner


def test_an_invalid_mqtt_url_is_reported_not_started() -> None:
    banner, commands = _spawned(Settings(dev_mode=True, mqtt_url="http://127.0.0.1:1883"))
    assert commands == []
    assert "MQTT off: MQTT_URL must look like" in banner
