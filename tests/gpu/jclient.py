"""A small client of a Jupyter server: REST with a token, and a kernel's channels over its websocket.

Only tornado (a dependency of jupyter_server), so it runs wherever the server does.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect


class Server:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token
        self.http = AsyncHTTPClient()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}", "Content-Type": "application/json"}

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
        """(status, parsed JSON or text); an HTTP error status is returned, not raised."""
        req = HTTPRequest(
            f"{self.url}{path}",
            method=method,
            headers=self._headers(),
            body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
            request_timeout=timeout,
            allow_nonstandard_methods=True,
        )
        try:
            resp = await self.http.fetch(req)
            code, raw = resp.code, resp.body
        except HTTPClientError as exc:
            code, raw = exc.code, (exc.response.body if exc.response is not None else b"")
        text = (raw or b"").decode(errors="replace")
        try:
            return code, json.loads(text) if text else None
        except json.JSONDecodeError:
            return code, text

    async def get(self, path: str) -> Any:
        code, body = await self.request("GET", path)
        if code != 200:
            raise RuntimeError(f"GET {path}: {code} {body}")
        return body

    async def channels(self, kernel_id: str) -> Channels:
        ws_url = self.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        conn = await websocket_connect(
            HTTPRequest(
                ws_url, headers={"Authorization": f"token {self.token}"}, connect_timeout=30, request_timeout=60
            )
        )
        return Channels(conn)


class Channels:
    """The kernel's shell and iopub channels, multiplexed over the server's websocket (JSON frames)."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.session = uuid.uuid4().hex

    def _msg(self, msg_type: str, content: dict, channel: str = "shell") -> dict:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "username": "prove",
                "session": self.session,
                "msg_type": msg_type,
                "version": "5.3",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }

    async def execute(self, code: str, timeout: float = 120, on_busy=None) -> dict[str, Any]:
        """Run code; returns status, stdout, ename/evalue, seconds, and when the kernel went busy."""
        msg = self._msg(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        msg_id = msg["header"]["msg_id"]
        t0 = time.perf_counter()
        await self.conn.write_message(json.dumps(msg))
        out: dict[str, Any] = {
            "status": None,
            "stdout": "",
            "stderr": "",
            "ename": None,
            "evalue": None,
            "t_busy": None,
            "t_reply": None,
        }
        idle = False
        deadline = time.monotonic() + timeout
        while out["status"] is None or not idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                out["status"] = out["status"] or "timeout"
                break
            try:
                raw = await asyncio.wait_for(self.conn.read_message(), remaining)
            except asyncio.TimeoutError:
                out["status"] = out["status"] or "timeout"
                break
            if raw is None:
                out["status"] = out["status"] or "websocket closed"
                break
            if isinstance(raw, bytes):
                continue
            m = json.loads(raw)
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = m["header"]["msg_type"]
            if kind == "status":
                state = m["content"]["execution_state"]
                if state == "busy" and out["t_busy"] is None:
                    out["t_busy"] = time.perf_counter()
                    if on_busy is not None:
                        asyncio.ensure_future(on_busy())
                idle = state == "idle"
            elif kind == "stream":
                out[m["content"]["name"]] = out.get(m["content"]["name"], "") + m["content"]["text"]
            elif kind == "error":
                out["ename"], out["evalue"] = m["content"]["ename"], m["content"]["evalue"]
            elif kind == "execute_reply":
                out["status"] = m["content"]["status"]
                out["t_reply"] = time.perf_counter()
                out["ename"] = out["ename"] or m["content"].get("ename")
        out["seconds"] = time.perf_counter() - t0
        return out

    def close(self) -> None:
        self.conn.close()
