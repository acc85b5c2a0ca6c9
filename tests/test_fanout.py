"""Dashboard fan-out over real sockets: the per-event throttle as it runs by itself (a
reading after a quiet spell goes out within a tick, an event at most once per interval,
always ending on its latest value) and permessage-deflate with every frame compressed
alone (one compressed copy serves every subscriber), including offers we decline."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import zlib

import pytest
from tornado.websocket import websocket_connect

from tests.conftest import WS
from webmacs.handlers.ws import parse_extensions

TELEMETRY = "/ws/controller/telemetry"
STREAM = "/ws/datapoints/stream"


async def _reader(stream: WS, frames: list) -> None:
    while True:
        msg = await stream.recv(timeout=10)
        if msg is None:
            return
        if msg["type"] == "datapoints_batch":
            frames.append((time.monotonic(), msg))


async def test_reading_after_a_quiet_spell_goes_out_within_a_tick(server):
    """Not up to a whole interval later: each event here is new, so nothing holds it back."""
    events = await server.linked_events(7)
    stream = await server.ws(STREAM)
    tel = await server.ws(TELEMETRY)
    delays = []
    for i, event in enumerate(events):
        sent = time.monotonic()
        await tel.send({"datapoints": [{"value": float(i), "event_public_id": event}], "batch_id": f"q{i}"})
        msg = await stream.recv_type("datapoints_batch")
        delays.append(time.monotonic() - sent)
        assert [(p["event_public_id"], p["value"]) for p in msg["datapoints"]] == [(event, float(i))]
        await tel.recv_type("ack")
    # a 200 ms flush clock would give a median near 100 ms; a 20 ms tick well under it
    assert sorted(delays)[len(delays) // 2] < 0.08, delays


async def test_each_event_at_most_once_per_interval_and_ends_on_its_latest(server):
    events = await server.linked_events(3)
    stream = await server.ws(STREAM)
    tel = await server.ws(TELEMETRY)
    frames: list = []
    task = asyncio.ensure_future(_reader(stream, frames))
    try:
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < 1.5:  # every event, as fast as the server acks
            await tel.send({"datapoints": [{"value": float(i), "event_public_id": e} for e in events],
                            "batch_id": f"t{i}"})
            await tel.recv_type("ack")
            i += 1
        last = float(i - 1)
        deadline = time.monotonic() + 5
        while not all(any(p["event_public_id"] == e and p["value"] == last for _, m in frames[-3:]
                          for p in m["datapoints"]) for e in events):
            assert time.monotonic() < deadline, "the last value of every event must be delivered"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert i > 20
    for event in events:
        seen = [t for t, m in frames if any(p["event_public_id"] == event for p in m["datapoints"])]
        gaps = [b - a for a, b in zip(seen, seen[1:])]
        # the server spaces an event's frames by whole 200 ms intervals; the client may see
        # a frame a little early or late of that, never twice in one interval
        assert gaps and min(gaps) > 0.15, gaps
        assert len(seen) <= 1.5 / 0.2 + 3, len(seen)


async def test_compressed_subscriber_gets_the_same_frames_as_a_plain_one(server):
    events = await server.linked_events(20)
    url = f"{server.ws_base}{STREAM}?token={server.admin_token}"
    deflated = WS(await websocket_connect(url, compression_options={}))
    server._sockets.append(deflated)  # closed with the server's other test sockets
    answer = deflated.conn.headers.get("Sec-WebSocket-Extensions", "")
    assert answer.startswith("permessage-deflate") and "server_no_context_takeover" in answer, answer
    assert (await deflated.recv())["type"] == "connected"
    plain = await server.ws(STREAM)
    tel = await server.ws(TELEMETRY)
    for round_no in range(4):
        await deflated.send({"type": "ping"})  # tornado's own replies in between broadcast frames
        assert await deflated.recv() == {"type": "pong"}
        points = [{"value": round_no * 100.0 + k, "event_public_id": e} for k, e in enumerate(events)]
        await tel.send({"datapoints": points, "batch_id": f"z{round_no}"})
        await tel.recv_type("ack")
        server.services.hub.flush()
        got = await deflated.recv_type("datapoints_batch")
        want = await plain.recv_type("datapoints_batch")
        assert got == want
        assert {p["event_public_id"]: p["value"] for p in got["datapoints"]} == {
            p["event_public_id"]: p["value"] for p in points}
    # compressed on the wire: the 20 repetitive points take a fraction of their JSON size
    proto = deflated.conn.protocol
    assert proto._wire_bytes_in < proto._message_bytes_in / 2, (proto._wire_bytes_in, proto._message_bytes_in)


class RawStream:
    """A hand-made stream client: sends exactly the handshake given, reads frames raw."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: str) -> None:
        self.reader, self.writer, self.headers = reader, writer, headers

    @classmethod
    async def open(cls, server, path: str, extensions: str | None) -> "RawStream":
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path}?token={server.admin_token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   + (f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else "") + "\r\n")
        writer.write(request.encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
        assert head.startswith("HTTP/1.1 101"), head
        return cls(reader, writer, head)

    def extension(self) -> str | None:
        for line in self.headers.split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "sec-websocket-extensions":
                return value.strip()
        return None

    async def frame(self) -> tuple[bool, bytes]:
        """(compressed, payload) of the next frame."""
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), 5)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return bool(b0 & 0x40), await self.reader.readexactly(n)

    async def message(self, wbits: int | None) -> dict:
        """The next message; a compressed one is inflated alone (no context kept) with a
        window of ``wbits``, as a client that agreed to that window would."""
        compressed, payload = await self.frame()
        assert compressed == (wbits is not None)
        if compressed:
            payload = zlib.decompressobj(-wbits).decompress(payload + b"\x00\x00\xff\xff")
        return json.loads(payload)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


@pytest.mark.parametrize("offer, answer, wbits", [
    # what Chromium offers: we choose the client's window, and compress each message alone
    ("permessage-deflate; client_max_window_bits",
     "permessage-deflate; server_no_context_takeover; client_max_window_bits=9", 15),
    ("permessage-deflate", "permessage-deflate; server_no_context_takeover", 15),
    # a smaller server window is honoured: the frames decode with a 1 KiB window
    ("permessage-deflate; server_max_window_bits=10",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=10", 10),
    # a quoted value is the same value (RFC 6455 9.1)
    ('permessage-deflate; server_max_window_bits="10"',
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=10", 10),
    # declined: unknown parameter, malformed values, a window zlib cannot make, a parameter
    # named twice, other extensions
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None, None),
    ("permessage-deflate; foo=1", None, None),
    ("permessage-deflate; server_max_window_bits=8", None, None),
    ("permessage-deflate; server_max_window_bits=16", None, None),
    ("permessage-deflate; client_max_window_bits=x", None, None),
    ("permessage-deflate; server_no_context_takeover=1", None, None),
    ("x-webkit-deflate-frame", None, None),
    # the first acceptable offer wins
    ("permessage-deflate; server_max_window_bits=08, permessage-deflate; server_max_window_bits=12",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=12", 12),
])
async def test_deflate_offers(server, offer, answer, wbits):
    events = await server.linked_events(20)
    raw = await RawStream.open(server, STREAM, offer)
    try:
        got = raw.extension()
        assert (got and parse_extensions(got)) == (answer and parse_extensions(answer)), got
        assert await raw.message(wbits) == {"type": "connected", "message": "Subscribed to live datapoint stream."}
        tel = await server.ws(TELEMETRY)
        points = [{"value": float(k), "event_public_id": e} for k, e in enumerate(events)]
        await tel.send({"datapoints": points, "batch_id": "w"})
        await tel.recv_type("ack")
        server.services.hub.flush()
        msg = await raw.message(wbits)  # 20 points: ~4 kB with repeats far back, beyond a 1 KiB window
        assert msg["type"] == "datapoints_batch"
        assert sorted(p["value"] for p in msg["datapoints"]) == [float(k) for k in range(20)]
    finally:
        await raw.close()


async def test_compression_off_by_setting_and_never_on_telemetry(server):
    raw = await RawStream.open(server, TELEMETRY, "permessage-deflate; client_max_window_bits")
    try:
        assert raw.extension() is None
    finally:
        await raw.close()
    server.services.config.stream_compression_level = 0
    raw = await RawStream.open(server, STREAM, "permessage-deflate; client_max_window_bits")
    try:
        assert raw.extension() is None
        assert (await raw.message(None))["type"] == "connected"
    finally:
        await raw.close()
