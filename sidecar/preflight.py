"""Start-up checks of what would otherwise fail later, inside the server, with a traceback: each raises one
:class:`~sidecar.errors.ConfigError` naming the file and the key, the path or the port."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from .config import Settings
from .errors import ConfigError


def check_listen(settings: Settings) -> None:
    """Before anything starts: the TLS files load and ``http.host``:``http.port`` is free to listen on.

    Raises:
        ConfigError: naming the file and the key (``http.tls_cert``, ``http.tls_key``) or the address and
            ``http.port``, e.g. ``config.toml: http.port: cannot listen on 127.0.0.1:8080: Address already in use``.
    """
    http = settings.http
    if http.tls_cert:
        for key, path in (("http.tls_cert", http.tls_cert), ("http.tls_key", http.tls_key)):
            if not Path(path).is_file():
                raise ConfigError(f"{settings.origin}: {key}: {path}: no such file")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(http.tls_cert, http.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{settings.origin}: http.tls_cert / http.tls_key: {http.tls_cert}, {http.tls_key}: "
                              f"cannot load the certificate and key: {e}") from None
    if http.port == 0:
        return
    try:
        infos = socket.getaddrinfo(http.host, http.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(f"{settings.origin}: http.host: cannot resolve {http.host!r}: {e}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as e:
            raise ConfigError(f"{settings.origin}: http.port: cannot listen on {http.host}:{http.port}: "
                              f"{e.strerror}") from None
