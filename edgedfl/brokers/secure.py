"""A secure swarm's broker files: a CA, a certificate and a password per device, the ACL; and the broker itself.

:func:`write_secure_swarm` writes, under one folder::

    secure.json         what is here: the swarm, its devices, the admin user
    ca.crt  ca.key      the swarm's certificate authority (keep ca.key off the devices)
    server.crt/.key     the broker's certificate, for ``server_names``
    <node>.crt/.key     each device's client certificate (CN = node id)
    <node>.password     each device's MQTT password (mode 0600)
    passwords           Mosquitto's password file (hashed)
    acl                 each device writes only its own topics, reads the swarm

and :func:`secure_broker` runs Mosquitto on it with one TLS listener and no
plain one. A client must show a certificate of the swarm's CA **and** the
user name and password of a device (two factors: a copied certificate alone
or a leaked password alone gets nothing); the broker takes the user name as
the MQTT client id, so nobody can take over another device's session, and
the ACL lets each device write only the topics that end in its own id. The
admin user (``edgedfl-admin``) may read and write the whole swarm: ``edgedfl
swarm clear`` and monitors use it.

:meth:`SecureSwarm.url` is what a device passes as its broker:
``mqtts://<node>@host:port?ca=...&cert=...&key=...&password_file=...``
(the password stays in its file, never in a config or a log).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from edgedfl.brokers.launch import (
    DEFAULT_MESSAGE_SIZE_LIMIT,
    BrokerTls,
    MosquittoBroker,
    _check_name,
    write_acl,
    write_password_file,
)
from edgedfl.brokers.pki import make_test_pki
from edgedfl.errors import ConfigError

__all__ = ["ADMIN", "SecureSwarm", "secure_broker", "write_secure_swarm"]

#: the user that may read and write a whole secure swarm (swarm clear, monitors)
ADMIN = "edgedfl-admin"
MANIFEST = "secure.json"


@dataclasses.dataclass(frozen=True)
class SecureSwarm:
    """The files of a secure swarm (see the module doc), all under ``directory``."""

    directory: Path
    swarm: str
    nodes: tuple[str, ...]
    admin: str = ADMIN

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def acl(self) -> Path:
        return self.directory / "acl"

    @property
    def passwords(self) -> Path:
        return self.directory / "passwords"

    def cert(self, user: str) -> Path:
        return self.directory / f"{self._user(user)}.crt"

    def key(self, user: str) -> Path:
        return self.directory / f"{self._user(user)}.key"

    def password_file(self, user: str) -> Path:
        return self.directory / f"{self._user(user)}.password"

    def _user(self, user: str) -> str:
        if user != self.admin and user not in self.nodes:
            raise ConfigError(f"{user!r} is not a device of secure swarm {self.swarm!r} ({', '.join(self.nodes)})")
        return user

    def url(self, user: str, host: str, port: int, *, max_payload: int = DEFAULT_MESSAGE_SIZE_LIMIT) -> str:
        """The broker URL of ``user`` (a device or the admin): its certificate, key and password file."""
        query = urllib.parse.urlencode({
            "ca": str(self.ca), "cert": str(self.cert(user)), "key": str(self.key(user)),
            "password_file": str(self.password_file(user)), "max_payload": max_payload,
        }, safe="/")
        return f"mqtts://{user}@{host}:{port}?{query}"

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SecureSwarm:
        """The secure swarm written earlier in ``directory``; :class:`ConfigError` if there is none."""
        path = Path(directory) / MANIFEST
        try:
            data = json.loads(path.read_text())
            return cls(Path(directory).absolute(), str(data["swarm"]), tuple(data["nodes"]), str(data.get("admin", ADMIN)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a secure swarm written by edgedfl ({exc})") from None


def write_secure_swarm(
    directory: str | os.PathLike[str],
    swarm: str,
    nodes: Iterable[str],
    *,
    server_names: Iterable[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
) -> SecureSwarm:
    """Write a CA, the broker's and every device's certificate, passwords and the ACL of ``swarm``.

    A folder that already holds the same swarm with the same devices is used
    as it is (the devices keep their credentials); one that holds anything
    else is refused, never overwritten.
    """
    out = Path(directory).absolute()  # device URLs name these files: from anywhere
    nodes = tuple(nodes)
    _check_name("swarm", swarm)
    for n in nodes:
        _check_name("node", n)
    if not nodes:
        raise ConfigError("write_secure_swarm: name at least one device")
    if ADMIN in nodes:
        raise ConfigError(f"{ADMIN!r} is the admin user: not a device name")
    if (out / MANIFEST).is_file():
        have = SecureSwarm.load(out)
        if (have.swarm, sorted(have.nodes)) == (swarm, sorted(nodes)):
            return have
        raise ConfigError(f"{out} already holds secure swarm {have.swarm!r} with devices {list(have.nodes)}: "
                          "choose another folder (nothing was changed)")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no secure swarm: choose another folder (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)
    make_test_pki(out, clients=(*nodes, ADMIN), server_names=server_names, days=days)
    users = {}
    for user in (*nodes, ADMIN):
        users[user] = secrets.token_urlsafe(24)
        fd = os.open(out / f"{user}.password", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(users[user] + "\n")
    write_password_file(out / "passwords", users)
    write_acl(out / "acl", swarm, nodes, admins=[ADMIN])
    (out / MANIFEST).write_text(json.dumps({"swarm": swarm, "nodes": list(nodes), "admin": ADMIN,
                                            "server_names": list(server_names)}, indent=1) + "\n")
    return SecureSwarm(out, swarm, nodes)


def secure_broker(secure: SecureSwarm, *, host: str = "127.0.0.1", port: int | None = None,
                  workdir: str | os.PathLike[str] | None = None,
                  message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT) -> MosquittoBroker:
    """A Mosquitto (not started) for ``secure``: one mTLS listener, passwords, the ACL, no anonymous access."""
    d = secure.directory
    tls = BrokerTls(cafile=str(secure.ca), certfile=str(d / "server.crt"), keyfile=str(d / "server.key"),
                    require_certificate=True, use_identity_as_username=False, port=port)
    return MosquittoBroker(host=host, workdir=workdir, message_size_limit=message_size_limit,
                           allow_anonymous=False, password_file=secure.passwords, acl_file=secure.acl, tls=tls,
                           plain_listener=False, extra_conf=["use_username_as_clientid true"])
