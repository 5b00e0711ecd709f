"""A Mosquitto of our own for the MQTT tests and benchmark: deploy/mosquitto/mosquitto.conf (and its
acl) with its own port, folders, topic prefix and logins, so both run the configuration that ships."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from ingest_service.core.config import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy" / "mosquitto"
BRIDGE_USER = "iot-bridge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class OwnedMosquitto:
    """`mosquitto -c <rendered deploy config>` on a free port. With `users`, logins and the ACL are
    on (as shipped); without, anonymous access (for the fault tests, which test durability)."""

    def __init__(self, root: Path, prefix: str, users: dict[str, str] | None = None) -> None:
        self.root = root
        self.prefix = prefix
        self.users = users
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def _render(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o777)  # mosquitto drops root for its own user, which writes the store here
        overrides = {
            "listener": f"listener {self.port} 127.0.0.1",
            "persistence_location": f"persistence_location {self.root}/",
            "allow_anonymous": f"allow_anonymous {'false' if self.users else 'true'}",
            "password_file": f"password_file {self.root / 'passwd'}" if self.users else "",
            "acl_file": f"acl_file {self.root / 'acl'}" if self.users else "",
        }
        lines = []
        for line in (DEPLOY / "mosquitto.conf").read_text().splitlines():
            key = line.split(" ", 1)[0]
            lines.append(overrides.get(key, line))
        lines.append(f"log_dest file {self.root / 'mosquitto.log'}")
        conf = self.root / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        if self.users:
            acl = (DEPLOY / "acl").read_text().replace("devices/", f"{self.prefix}/")
            (self.root / "acl").write_text(acl)
            passwd = self.root / "passwd"
            passwd.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
            for path in (passwd, self.root / "acl"):
                shutil.chown(path, "mosquitto", "mosquitto")
                path.chmod(0o600)
        return conf

    def start(self) -> OwnedMosquitto:
        conf = self._render()
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "mosquitto.stderr").open("ab"),
            start_new_session=True,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log(self) -> str:
        path = self.root / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, user: str | None = None, password: str | None = None) -> str:
        login = f"{user}:{password}@" if user else ""
        return f"mqtt://{login}127.0.0.1:{self.port}"
