"""Write a Prometheus target list of every running single-user server of a JupyterHub (docs/metrics.md).

JupyterHub has no Prometheus service discovery. This asks the hub's REST API which servers are ready and writes
them as a ``file_sd`` list: each server is scraped through the hub's proxy at ``<its URL>metrics``, with the
``instance`` label set to that URL so that two people's series never mix. Prometheus re-reads the file when it
changes; run this every minute (cron, a systemd timer, or as a JupyterHub service)::

    JUPYTERHUB_API_TOKEN=… python3 jupyterhub_prometheus_targets.py https://hub.example.org \\
        /etc/prometheus/jupyterhub-targets.json

The token is the hub service's ("prometheus", with the scopes list:users, read:servers, access:servers); the same
token is the one Prometheus sends to the servers. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.parse
import urllib.request

PAGE = 200


def file_sd(users: list[dict], hub_url: str) -> list[dict]:
    """Target groups for the ready servers among ``users`` (as ``GET /hub/api/users`` answers them)."""
    hub = urllib.parse.urlsplit(hub_url)
    groups = []
    for user in users:
        for server in (user.get("servers") or {}).values():
            if server.get("ready") and server.get("url"):
                path = server["url"]  # e.g. /user/alice/ (with the hub's base URL in front)
                labels = {"__scheme__": hub.scheme, "__metrics_path__": f"{path}metrics", "instance": hub.netloc + path}
                groups.append({"targets": [hub.netloc], "labels": labels})
    return groups


def active_users(hub_url: str, token: str) -> list[dict]:
    """Every user with a running server, page by page."""
    users: list[dict] = []
    while True:
        query = urllib.parse.urlencode({"state": "active", "offset": len(users), "limit": PAGE})
        request = urllib.request.Request(
            f"{hub_url.rstrip('/')}/hub/api/users?{query}", headers={"Authorization": f"token {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            page = json.load(response)
        users += page
        if len(page) < PAGE:
            return users


def write_atomically(path: str, groups: list[dict]) -> None:
    """Prometheus must never read half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".targets-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(groups, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not os.environ.get("JUPYTERHUB_API_TOKEN"):
        print(__doc__, file=sys.stderr)
        return 2
    hub_url, path = argv
    groups = file_sd(active_users(hub_url, os.environ["JUPYTERHUB_API_TOKEN"]), hub_url)
    write_atomically(path, groups)
    print(f"{len(groups)} server(s) written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
