"""What the endpoint refuses, in plain Python (no Ray): API keys, media URIs (SSRF), body sizes.

- API key: ``RAY_EMER_API_KEY``, else the file named by ``RAY_EMER_API_KEY_FILE``, else a
  fresh random key that the server prints once at start (as notebook servers do).
- Media URIs: ``data:`` URLs; ``http(s)`` only to hosts on the allow-list, never to
  loopback, private, link-local or reserved addresses (checked on every resolved
  address), no redirects followed; ``s3://`` and local paths only under an allowed
  prefix (no ``..`` escapes); ``file://`` and anything else never.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import secrets
import socket
import urllib.parse
import urllib.request


class Forbidden(ValueError):
    """A URI the server will not fetch (403)."""


class TooLarge(ValueError):
    """A body or a fetched file over the size limit (413)."""


class BadRequest(ValueError):
    """Malformed input (400)."""


def resolve_api_key(env: dict | None = None) -> tuple[str, bool]:
    """-> (key, generated): from ``RAY_EMER_API_KEY``, ``RAY_EMER_API_KEY_FILE``, or a new random key."""
    env = os.environ if env is None else env
    if env.get("RAY_EMER_API_KEY"):
        return env["RAY_EMER_API_KEY"].strip(), False
    if env.get("RAY_EMER_API_KEY_FILE"):
        with open(env["RAY_EMER_API_KEY_FILE"]) as fh:
            key = fh.read().strip()
        if not key:
            raise ValueError(f"{env['RAY_EMER_API_KEY_FILE']}: empty API key file")
        return key, False
    return secrets.token_urlsafe(24), True


def bearer_ok(header: str | None, key: str) -> bool:
    """``Authorization: Bearer KEY`` compared in constant time."""
    if not header or not header.startswith("Bearer "):
        return False
    return secrets.compare_digest(header[len("Bearer "):].strip().encode(), key.encode())


def decode_data_url(url: str, max_bytes: int) -> tuple[bytes, str]:
    """``data:video/mp4;base64,...`` -> (bytes, suffix); the size limit applies to the decoded bytes."""
    head, _, payload = url.partition(",")
    if not head.startswith("data:") or ";base64" not in head:
        raise BadRequest("a data URL must be data:<type>;base64,<payload>")
    if len(payload) * 3 // 4 > max_bytes:
        raise TooLarge(f"the data URL holds more than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"the data URL is not valid base64: {exc}") from exc
    mime = head[len("data:"):].split(";", 1)[0]
    return data, "." + (mime.split("/", 1)[1] if "/" in mime else "bin")


def _public(host: str) -> None:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise Forbidden(f"cannot resolve {host!r}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global or addr.is_loopback or addr.is_private or addr.is_link_local or addr.is_reserved:
            raise Forbidden(f"{host!r} resolves to a non-public address ({addr}); refused")


def check_uri(uri: str, allow_hosts: list[str], allow_prefixes: list[str]) -> str:
    """Return ``"http"`` or ``"storage"`` for a URI the server may read, else raise ``Forbidden``."""
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        host = (parsed.hostname or "").lower()
        if not host or host not in {h.lower() for h in allow_hosts}:
            raise Forbidden(f"host {host!r} is not on the server's allow-list")
        _public(host)
        return "http"
    if scheme == "file":
        raise Forbidden("file:// URIs are never read")
    if scheme == "s3":
        if ".." in uri[len("s3://"):].split("/"):
            raise Forbidden(f"{uri!r}: '..' is not allowed in a URI")
        norm = uri
    elif scheme == "":
        norm = os.path.realpath(uri)  # symlinks and '..' resolved before the prefix check
    else:
        raise Forbidden(f"URI scheme {scheme!r} is not allowed")
    if not any(_under(norm, p) for p in allow_prefixes):
        raise Forbidden(f"{uri!r} is not under an allowed prefix")
    return "storage"


def _under(path: str, prefix: str) -> bool:
    if not prefix:
        return False
    prefix = prefix if prefix.startswith("s3://") else os.path.realpath(prefix)
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - never follow
        raise Forbidden(f"the server answered a redirect ({code}) to {newurl!r}; redirects are not followed")


def fetch_http(url: str, max_bytes: int, timeout_s: float = 20.0) -> bytes:
    """GET an allowed http(s) URL, no redirects, at most ``max_bytes``."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            data = resp.read(max_bytes + 1)
    except OSError as exc:  # refused, unreachable, timed out, an HTTP error status: the client's URL, a 400
        raise BadRequest(f"cannot fetch {url}: {exc}") from exc
    if len(data) > max_bytes:
        raise TooLarge(f"{url} is larger than {max_bytes} bytes")
    return data
