"""The server's broker client reads the broker's answer lines as the broker writes them (a real unix socket)."""

import asyncio
import json
import os
import tempfile

from jupyter_gpuenv.engines.broker import BrokerClient


async def test_heartbeats_keep_a_long_answer_alive_and_only_real_progress_reaches_the_caller():
    folder = tempfile.mkdtemp(prefix="gb")
    path = os.path.join(folder, "broker.sock")

    async def answer(reader, writer):
        await reader.readline()
        for line in ({"progress": {"working": "pull"}}, {"progress": {"bytes_done": 5}},
                     {"progress": {"working": "pull"}}, {"result": {"pulled": True}}):  # fmt: skip
            writer.write(json.dumps(line).encode() + b"\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.close()

    server = await asyncio.start_unix_server(answer, path)
    seen = []
    try:
        result = await BrokerClient(f"unix://{path}", 5.0).call("pull", {"environment": "x"}, progress=seen.append)
    finally:
        server.close()
        os.unlink(path)
        os.rmdir(folder)
    assert result == {"pulled": True} and seen == [{"bytes_done": 5}]
