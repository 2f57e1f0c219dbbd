"""How big an image is, asked of its registry (Registry HTTP API v2) before pulling it: for the disk check.

Best effort: anything unexpected answers None and the pull goes ahead (the engine then says what is wrong).
Credentials are the ones the Docker client uses for that registry (the server user's docker config), handed
in by the caller; nothing here reads them from a notebook or a request.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
_INDEX_TYPES = MANIFEST_TYPES[:2]


@dataclass(frozen=True)
class Reference:
    host: str  # where the registry answers, e.g. "registry-1.docker.io" for Docker Hub
    repository: str  # "library/ubuntu"
    reference: str  # a tag or a digest


def parse(image: str) -> Reference:
    """An image reference as the engine reads it: bare names are Docker Hub's, one-part ones under library/."""
    name, digest = (image.split("@", 1) + [""])[:2]
    last = name.rsplit("/", 1)[-1]
    name, tag = name.rsplit(":", 1) if ":" in last else (name, "latest")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, rest
    else:
        host, repository = "registry-1.docker.io", name if "/" in name else f"library/{name}"
    if host == "docker.io":
        host = "registry-1.docker.io"
    return Reference(host, repository, digest or tag)


class _Client:
    def __init__(self, credentials: dict[str, str] | None, allow_http: bool, timeout: float) -> None:
        self.credentials, self.allow_http, self.timeout = credentials or {}, allow_http, timeout
        self.authorization: str | None = None

    def _basic(self) -> str | None:
        user, password = self.credentials.get("username"), self.credentials.get("password")
        if not user or password is None:
            return None
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def get(self, host: str, path: str) -> tuple[str, bytes]:
        """GET a registry path (https, then http where allowed), answering one auth challenge on the way."""
        last: Exception | None = None
        for scheme in ("https", "http") if self.allow_http else ("https",):
            try:
                return self._get(f"{scheme}://{host}{path}")
            except urllib.error.HTTPError:
                raise
            except OSError as exc:  # TLS to a plain-http registry, refused connection, ...
                last = exc
        raise last or OSError("no answer")

    def _get(self, url: str) -> tuple[str, bytes]:
        for _attempt in range(2):
            request = urllib.request.Request(url, headers={"Accept": ", ".join(MANIFEST_TYPES)})
            if self.authorization:
                request.add_header("Authorization", self.authorization)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.headers.get("Content-Type", "").split(";")[0], response.read(4 << 20)
            except urllib.error.HTTPError as exc:
                if exc.code != 401 or self.authorization is not None:
                    raise
                self.authorization = self._answer(exc.headers.get("WWW-Authenticate", ""))
                if self.authorization is None:
                    raise
        raise OSError("the registry asked for credentials twice")

    def _answer(self, challenge: str) -> str | None:
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            return self._basic()
        if scheme != "bearer":
            return None
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm or not realm.startswith(("https://", "http://")):
            return None
        request = urllib.request.Request(f"{realm}?{urllib.parse.urlencode(params)}")
        if self.credentials.get("identitytoken"):
            return None  # an OAuth refresh token: the engine knows how to use it, this best-effort check does not
        basic = self._basic()
        if basic:
            request.add_header("Authorization", basic)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            answer = json.loads(response.read(1 << 20))
        token = answer.get("token") or answer.get("access_token")
        return f"Bearer {token}" if token else None


def layer_sizes(
    image: str,
    platform: tuple[str, str],
    credentials: dict[str, str] | None = None,
    allow_http: bool = False,
    timeout: float = 5.0,
) -> dict[str, int] | None:
    """Compressed layer sizes by digest for ``image`` on ``platform`` (os, architecture), or None when unknown."""
    ref = parse(image)
    client = _Client({k.lower(): v for k, v in (credentials or {}).items()}, allow_http, timeout)
    try:
        kind, body = client.get(ref.host, f"/v2/{ref.repository}/manifests/{ref.reference}")
        manifest = json.loads(body)
        if kind in _INDEX_TYPES or "manifests" in manifest:
            wanted = [
                m
                for m in manifest.get("manifests") or []
                if (m.get("platform") or {}).get("os") == platform[0]
                and (m.get("platform") or {}).get("architecture") == platform[1]
            ]
            if not wanted:
                return None
            _, body = client.get(ref.host, f"/v2/{ref.repository}/manifests/{wanted[0]['digest']}")
            manifest = json.loads(body)
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not layers:
            return None
        return {str(layer["digest"]): int(layer["size"]) for layer in layers}
    except (OSError, ValueError, KeyError, TypeError):
        return None
