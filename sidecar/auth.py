"""Who is calling, and what may they touch: operator tokens, agent sign-in with Ethereum (SIWE), access policies.

Principals (:class:`Principal`):

* ``admin``: an operator token from ``auth.admin_tokens`` (or a loopback client without a token, while the server
  binds to loopback and ``auth.loopback_open`` is on): everything.
* ``read``: an operator token from ``auth.read_tokens``: every ``GET``, and ``POST`` routes that only read
  (declared with ``require("read")``).
* ``agent:<address>``: an agent signed in with Ethereum (EIP-4361): its own memory only (routes whose path has an
  ``{agent}`` parameter equal to its address), plus routes that declare ``require(..., "agent")``.

Operator tokens are kept only as ``sha256:`` hashes. Agent tokens are short-lived JSON Web Tokens (RFC 7519, HS256
with ``auth.secret``, by PyJWT) behind the prefix ``mma_``, scoped to one address (``sub``) and one chain id
(``chain_id``); they die with their expiry (``exp``, ``auth.token_ttl`` after sign-in).

For plugin authors (see docs/plugins.md, "Access control"):

* ``Depends(require("admin"))``, ``require("read")``, ``require("read", "agent")``: a route's own policy (it replaces
  the default policy below);
* ``principal: Principal = Depends(current_principal)``: who is calling;
* ``check_agent(principal, address, write=...)`` or ``principal.may_access(address, write=...)``: may the caller
  touch agent ``address`` (admin: yes; read: reads only; agent: its own address only). ``check_agent`` raises 403.

Default policy of plugin routes that declare none: admin everything; read ``GET``/``HEAD``; agents only routes with
an ``{agent}`` path parameter equal to their own address. A plugin widens it for its own routes with
:class:`AccessRule` objects returned by its ``monmouth_access_rules`` hook (a ``POST`` that only reads, chain data any
agent may read, with a check of the request body).

Run ``monmouth token new`` to make an operator token and the hash to put in config.toml. Sign-in messages
(EIP-4361) are built and read in :mod:`monmouth.siwe`.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .chain import normalize_address
from .errors import ConfigError
from .limits import authorization
from .problems import ProblemError
from .siwe import SiweError, iso, parse_siwe, rfc3339_seconds

if TYPE_CHECKING:
    from .config import Settings

Role = Literal["admin", "read", "agent"]
AGENT_TOKEN_PREFIX = "mma_"
_TOKEN_ALGORITHM = "HS256"  # agent tokens: HMAC-SHA256 with auth.secret (RFC 7518, section 3.2)
OPERATOR_TOKEN_PREFIX = "mmo_"

_SAFE = {"GET", "HEAD", "OPTIONS"}


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a client or bind address) is loopback. ``testclient`` is Starlette's in-process client."""
    if not host:
        return False
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_operator_token() -> tuple[str, str]:
    """A fresh operator token and its ``sha256:`` hash (the hash goes in config.toml)."""
    t = OPERATOR_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return t, hash_token(t)


@dataclass(frozen=True)
class Principal:
    """Who is calling.

    Attributes:
        role: ``admin``, ``read`` or ``agent``.
        agent: the agent's address (``0x`` + 40 lowercase hex) when ``role == "agent"``.
        via: ``token`` (operator token), ``siwe`` (agent token) or ``loopback`` (no token, loopback open).
        token_id: a short, non-secret id of the token (first 12 hex digits of its hash), for audit and limits.
    """

    role: Role
    agent: str | None = None
    via: str = "token"
    token_id: str | None = None

    @property
    def name(self) -> str:
        if self.role == "agent":
            return f"agent:{self.agent}"
        return f"{self.role}@loopback" if self.via == "loopback" else self.role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def reads_all(self) -> bool:
        """Operators (admin and read) see every agent's data."""
        return self.role in ("admin", "read")

    def may_access(self, agent: str | bytes, *, write: bool = False) -> bool:
        """May this principal read (or, with ``write``, change) agent ``agent``'s data?"""
        if self.role == "admin":
            return True
        if self.role == "read":
            return not write
        return self.agent is not None and normalize_address(agent) == self.agent


def check_agent(principal: Principal, agent: str | bytes, *, write: bool = False) -> None:
    """Raise 403 unless ``principal`` may touch agent ``agent`` (see :meth:`Principal.may_access`)."""
    if not principal.may_access(agent, write=write):
        raise ProblemError(403, f"{principal.name} may not {'change' if write else 'read'} agent {agent!s}'s data",
                           field="agent")


@dataclass(frozen=True)
class AccessRule:
    """One plugin route's exception to the default policy (:func:`default_policy`), returned by the plugin's
    ``monmouth_access_rules`` hook. A route that declares its own policy (``require(...)``) ignores it.

    Attributes:
        method: the HTTP method, upper case (``"POST"``).
        path: the route's path template, exactly as the plugin's router declares it (``"/example/search"``).
        read: a read token may call it (for a ``POST`` that only reads; ``GET`` and ``HEAD`` are allowed anyway).
        agent: any signed-in agent may call it (a route without an ``{agent}`` parameter, e.g. chain data).
        agent_body: with ``agent``: called with the request's decoded JSON body when an agent calls, before the route
            runs; it raises :class:`~monmouth.problems.ProblemError` (403, naming the field) to refuse. A body that
            is not JSON is not checked: the route's own validation answers 422.
    """

    method: str
    path: str
    read: bool = False
    agent: bool = False
    agent_body: Callable[[Any], None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.method.upper(), self.path


# ---------------------------------------------------------------------------------------------------------------------
# The authenticator


class Authenticator:
    """Checks bearer tokens and signs agents in. Reads ``settings.auth`` on every call, so a hot reload that
    adds or removes an operator token applies at once.

    Args:
        get_settings: the current settings (``lambda: app.settings``).
        bind_host: the address the server binds (loopback clients without a token act as admin only while it is
            loopback).
    """

    MAX_NONCES = 10_000
    #: Sign-in nonces outstanding per client address: a new one beyond this retires that client's oldest, so one
    #: client (or a flood of anonymous GET /auth/nonce) cannot use up everyone's sign-ins.
    NONCES_PER_CLIENT = 8
    SKEW = 60.0

    def __init__(self, get_settings: Callable[[], Settings], bind_host: str) -> None:
        self.get_settings = get_settings
        self.bind_loopback = is_loopback(bind_host)
        self._random_secret = secrets.token_bytes(32)
        self._nonces: dict[str, tuple[float, str]] = {}  # nonce -> (expiry, client)
        self._by_client: dict[str, collections.deque[str]] = {}
        self._lock = threading.Lock()
        self._hash_cache: tuple[int, int, dict[str, str]] = (0, 0, {})
        self.on_token_use: Callable[[Principal, str | None], None] | None = None

    @property
    def _secret(self) -> bytes:
        """The HMAC key of agent tokens: ``auth.secret`` as it is now (a hot reload that rotates it retires every
        token signed with the old one), or a per-process random key while it is empty."""
        s = self.get_settings().auth.secret
        return bytes.fromhex(s.removeprefix("0x")) if s else self._random_secret

    # -- operator tokens
    def _operator_hashes(self) -> dict[str, str]:
        a = self.get_settings().auth
        key = (id(a.admin_tokens), id(a.read_tokens))
        if self._hash_cache[:2] != key:
            table = {h: "read" for h in a.read_tokens}
            table.update({h: "admin" for h in a.admin_tokens})
            self._hash_cache = (*key, table)
        return self._hash_cache[2]

    def loopback_open(self) -> bool:
        return self.bind_loopback and self.get_settings().auth.loopback_open

    def authenticate(self, authorization: str | None, client_host: str | None, host_header: str | None = None,
                     origin: str | None = None) -> Principal | None:
        """The caller's principal, ``None`` when anonymous and not allowed in as loopback.

        A request without a token is an admin only when the loopback rule holds: the server binds to loopback,
        ``auth.loopback_open``, the client address is loopback, and (against DNS rebinding and cross-site requests
        from a browser) the ``Host`` header names a loopback host and any ``Origin`` is a loopback origin.

        Raises:
            ProblemError: 401 for a malformed, unknown, forged or expired token.
        """
        if not authorization:
            if (self.loopback_open() and is_loopback(client_host) and _loopback_host(host_header)
                    and (not origin or _loopback_origin(origin))):
                return Principal("admin", via="loopback")
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("Authorization must be 'Bearer <token>'")
        if token.startswith(AGENT_TOKEN_PREFIX):
            return self._agent_token(token)
        h = hash_token(token)
        role = self._operator_hashes().get(h)
        if role is None:
            raise _unauthorized("unknown token")
        return Principal(role, via="token", token_id=h[7:19])  # type: ignore[arg-type]

    def _agent_token(self, token: str) -> Principal:
        # The expiry is checked below against time.time(), the clock of every other check here (PyJWT reads
        # datetime.now()); the signature, the algorithm and the claims' presence are PyJWT's.
        try:
            claims = jwt.decode(token[len(AGENT_TOKEN_PREFIX):], self._secret, algorithms=[_TOKEN_ALGORITHM],
                                options={"require": ["sub", "chain_id", "exp"], "verify_exp": False})
            addr, chain, exp = str(claims["sub"]), int(claims["chain_id"]), float(claims["exp"])
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise _unauthorized("invalid agent token") from None
        if exp < time.time():
            raise _unauthorized("agent token expired: sign in again (GET /auth/nonce, POST /auth/siwe)")
        if chain != self.get_settings().auth.chain_id:
            raise _unauthorized("agent token was issued for another chain id")
        return Principal("agent", agent=addr, via="siwe", token_id=hashlib.sha256(token.encode()).hexdigest()[:12])

    # -- sign-in
    def siwe_domain(self, host_header: str | None) -> str:
        """The domain SIWE messages must name: ``auth.domain``; while it is empty, the request's ``Host`` only when
        the server binds to loopback and that ``Host`` names a loopback host (local development). Anything else
        could let a phishing site relay its own domain in ``Host``, which is what SIWE's domain binding prevents.

        Raises:
            ProblemError: 403 naming ``auth.domain`` when no domain can be trusted.
        """
        cfg = self.get_settings().auth
        if cfg.domain:
            return cfg.domain
        if self.bind_loopback and host_header and _loopback_host(host_header):
            return host_header
        raise ProblemError(403, "auth.domain: not set, so agents may sign in only on a loopback bind through a "
                                f"loopback Host (got Host {host_header!r}); set auth.domain to the domain agents "
                                "sign for", field="auth.domain")

    def new_nonce(self, client: str | None = None) -> tuple[str, float]:
        """A fresh nonce for ``client`` (its address); retires that client's oldest beyond
        :attr:`NONCES_PER_CLIENT`.

        Raises:
            ProblemError: 503 with ``Retry-After`` when :attr:`MAX_NONCES` are outstanding.
        """
        now = time.time()
        ttl = self.get_settings().auth.nonce_ttl
        who = client or "?"
        with self._lock:
            mine = self._by_client.setdefault(who, collections.deque())
            while len(mine) >= self.NONCES_PER_CLIENT:
                self._nonces.pop(mine.popleft(), None)
            if len(self._nonces) >= self.MAX_NONCES:
                self._expire(now)
            if len(self._nonces) >= self.MAX_NONCES:
                raise ProblemError(503, "too many sign-ins in progress; retry shortly", headers={"Retry-After": "5"})
            nonce = secrets.token_hex(16)
            self._nonces[nonce] = (now + ttl, who)
            mine.append(nonce)
        return nonce, now + ttl

    def _expire(self, now: float) -> None:
        """Drop expired nonces and clients with none outstanding (under the lock)."""
        for n, (exp, _who) in list(self._nonces.items()):
            if exp < now:
                del self._nonces[n]
        for who, q in list(self._by_client.items()):
            live = collections.deque(n for n in q if n in self._nonces)
            if live:
                self._by_client[who] = live
            else:
                del self._by_client[who]

    def sign_in(self, message: str, signature: str, request_host: str | None) -> dict[str, Any]:
        """Verify a signed EIP-4361 message and issue an agent token.

        Raises:
            ProblemError: 401 naming what failed (message, nonce, domain, chain_id, expiration_time, signature);
                403 when sign-in is off or no domain can be trusted (:meth:`siwe_domain`).
        """
        cfg = self.get_settings().auth
        if not cfg.siwe:
            raise ProblemError(403, "agent sign-in is disabled (auth.siwe = false)", field="auth.siwe")
        try:
            msg = parse_siwe(message)
        except SiweError as e:
            raise _unauthorized(str(e), field=e.field) from None
        now = time.time()
        with self._lock:
            got = self._nonces.pop(msg.nonce, None)  # used once, whatever happens next
        if got is None or got[0] < now:
            raise _unauthorized("nonce: unknown, already used or expired (GET /auth/nonce)", field="nonce")
        want_domain = self.siwe_domain(request_host)
        if msg.domain.lower() != want_domain.lower():
            raise _unauthorized(f"domain: the message names {msg.domain!r}, this server is {want_domain!r}",
                                field="domain")
        if msg.chain_id != cfg.chain_id:
            raise _unauthorized(f"chain_id: the message names {msg.chain_id}, this server serves {cfg.chain_id}",
                                field="chain_id")
        if msg.expiration_time and rfc3339_seconds(msg.expiration_time, "expiration_time") <= now:
            raise _unauthorized("expiration_time: the message has expired", field="expiration_time")
        if msg.not_before and rfc3339_seconds(msg.not_before, "not_before") > now + self.SKEW:
            raise _unauthorized("not_before: the message is not valid yet", field="not_before")
        if rfc3339_seconds(msg.issued_at, "issued_at") > now + self.SKEW:
            raise _unauthorized("issued_at: in the future", field="issued_at")
        try:
            from eth_account import Account
            from eth_account.messages import encode_defunct

            signer = Account.recover_message(encode_defunct(text=message), signature=signature)
        except Exception:
            raise _unauthorized("signature: malformed", field="signature") from None
        if signer.lower() != msg.address.lower():
            raise _unauthorized("signature: not signed by the message's address", field="signature")
        expires = now + cfg.token_ttl
        addr = msg.address.lower()
        token = jwt.encode({"sub": addr, "chain_id": cfg.chain_id, "exp": round(expires, 3),
                            "jti": secrets.token_hex(8)}, self._secret, algorithm=_TOKEN_ALGORITHM)
        return {"token": f"{AGENT_TOKEN_PREFIX}{token}", "token_type": "Bearer", "agent": addr,
                "expires_at": iso(expires), "expires_in": int(expires - now)}


def _loopback_host(host: str | None) -> bool:
    if host is None:
        return True  # HTTP/1.0 without Host: nothing a browser would send
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if host.startswith("["):
        name = host[1:].split("]")[0]
    return name in ("testserver",) or is_loopback(name)


def _loopback_origin(origin: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return is_loopback(urlsplit(origin).hostname)
    except ValueError:
        return False


def current_principal_from_scope(auth: Authenticator, scope: Any) -> Principal:
    """The caller of an ASGI request (see :meth:`Authenticator.authenticate`); 401 when anonymous."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
    client = scope.get("client")
    host = client[0] if client else None
    cred = authorization(scope)  # the one the rate limiter keys on (several are refused before either runs)
    p = auth.authenticate(cred.decode("latin-1") if cred is not None else None, host, headers.get("host"),
                          headers.get("origin"))
    if p is None:
        raise _unauthorized("authentication required: send 'Authorization: Bearer <token>' (an operator token, or "
                            "an agent token from POST /auth/siwe)")
    if auth.on_token_use is not None and p.via != "loopback":
        auth.on_token_use(p, host)
    return p


def _unauthorized(detail: str, field: str | None = None) -> ProblemError:
    return ProblemError(401, detail, field=field, headers={"WWW-Authenticate": 'Bearer realm="monmouth"'})


def check_bind(settings: Settings) -> None:
    """Refuse to serve on a non-loopback address without an operator token configured, or with agent sign-in on
    and no ``auth.domain``.

    Raises:
        ConfigError: naming http.host and the auth keys.
    """
    if not is_loopback(settings.http.host) and not settings.auth.enabled:
        raise ConfigError(
            f"{settings.origin}: http.host = {settings.http.host!r} is not a loopback address and no operator "
            "token is set (auth.admin_tokens / auth.read_tokens): refusing to serve without authentication. "
            "Set a token (monmouth token new) or bind to 127.0.0.1.")
    if not is_loopback(settings.http.host) and settings.auth.siwe and not settings.auth.domain:
        raise ConfigError(
            f"{settings.origin}: auth.domain: required when http.host = {settings.http.host!r} is not a loopback "
            "address and agents sign in (auth.siwe = true): set it to the domain agents sign for (e.g. "
            "\"monmouth.example.org\"), or set auth.siwe = false. The request's Host header is trusted only on a "
            "loopback bind.")


# ---------------------------------------------------------------------------------------------------------------------
# FastAPI dependencies

bearer = HTTPBearer(auto_error=False, description="An operator token (admin or read) or an agent token from "
                                                  "POST /auth/siwe.")


def current_principal(request: Request,
                      _cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """The caller (authenticated once per request). 401 when anonymous and not an open loopback client."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    p = current_principal_from_scope(request.app.state.auth, request.scope)
    request.state.principal = p
    return p


def require(*roles: str) -> Any:
    """A dependency enforcing a route's own access policy: the caller's role must be one of ``roles``
    (``"admin"`` is always allowed). ``"agent"`` admits any signed-in agent: the route must then keep it to its own
    data (``check_agent``). Use as ``dependencies=[require("read")]`` or ``p: Principal = require("read", "agent")``.
    """
    allowed = set(roles) | {"admin"}
    bad = allowed - {"admin", "read", "agent"}
    if bad:
        raise ValueError(f"require(): unknown roles {sorted(bad)}")

    def dependency(request: Request, p: Annotated[Principal, Depends(current_principal)]) -> Principal:
        check_roles(p, frozenset(allowed), request.method, request.url.path)
        return p

    dependency.__monmouth_policy__ = frozenset(allowed)  # type: ignore[attr-defined]
    return Depends(dependency)


def check_roles(p: Principal, allowed: frozenset[str], method: str, path: str) -> None:
    """A route's own policy (:func:`require`): raise 403 unless ``p.role`` is in ``allowed``."""
    if p.role not in allowed:
        raise ProblemError(403, f"{p.name} may not call {method} {path} (needs {' or '.join(sorted(allowed))})")


def declared_roles(route: Any) -> frozenset[str] | None:
    """The roles a route admits by its own policy (:func:`require` among its dependencies), or ``None`` when it
    declares none and the default policy applies."""
    return route_mark(route, "__monmouth_policy__")  # type: ignore[no-any-return]


def route_mark(route: Any, attr: str) -> Any:
    """The value of ``attr`` on the first of ``route``'s dependencies (searched through theirs) that carries it, or
    ``None``: how a route declares something about itself to the core (its access policy, :func:`require`; its
    audit event, :func:`monmouth.audit.audited`)."""
    dep = getattr(route, "dependant", None)
    stack = list(getattr(dep, "dependencies", []) or [])
    while stack:
        d = stack.pop()
        value = getattr(d.call, attr, None)
        if value is not None:
            return value
        stack.extend(d.dependencies or [])
    return None


def check_default_policy(p: Principal, method: str, path: str, path_params: Mapping[str, Any],
                         rule: AccessRule | None) -> Callable[[Any], None] | None:
    """The default policy of a plugin route (see the module docstring), for the route template ``path`` called with
    ``path_params``, widened by the plugin's ``rule`` for it. One decision for HTTP requests (:func:`default_policy`)
    and in-process MCP tool calls (:meth:`monmouth.mcp_server.Caller.invoke`).

    Returns:
        The rule's body check (``AccessRule.agent_body``) still to run on the decoded JSON body, or ``None``.

    Raises:
        ProblemError: 403 naming what the caller may not do (``field`` ``path.agent`` for another agent's data).
    """
    if p.role == "admin":
        return None
    if p.role == "read":
        if method in _SAFE or (rule is not None and rule.read):
            return None
        raise ProblemError(403, f"a read token may not call {method} {path}")
    if "agent" in path_params:
        if normalize_address(str(path_params["agent"])) == p.agent:
            return None
        raise ProblemError(403, f"{p.name} may not touch agent {path_params['agent']}'s data", field="path.agent")
    if rule is not None and rule.agent:
        return rule.agent_body
    raise ProblemError(403, f"{p.name} may not call {method} {path}")


async def default_policy(request: Request, p: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """The policy of plugin routes that declare none (see the module docstring)."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    method = request.method
    if route is not None:
        cache = request.app.state.policy_cache
        declared = cache.get(id(route))
        if declared is None:
            declared = cache[id(route)] = declared_roles(route) is not None
        if declared:
            return p
    rule: AccessRule | None = request.app.state.access_rules.get((method, path))
    body_check = check_default_policy(p, method, path, request.path_params, rule)
    if body_check is not None:
        try:
            body = await request.json()
        except ValueError:
            return p  # the route's own validation answers 422
        body_check(body)
    return p
