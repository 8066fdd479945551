#!/usr/bin/env python3
"""A tiny keep-alive HTTP/1.1 origin for the balancing-quality bench:
answers every request after DELAY_MS milliseconds (asyncio, so a slow
origin still serves requests concurrently).  Usage: origin.py PORT DELAY_MS"""
import asyncio
import sys

PORT, DELAY = int(sys.argv[1]), float(sys.argv[2]) / 1000.0
BODY = b"hello\n"
COUNT = [0]
RESP = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            COUNT[0] += 1
            await asyncio.sleep(DELAY)
            writer.write(RESP)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=1024)
    async with server:
        await server.serve_forever()


import signal
signal.signal(signal.SIGTERM, lambda *_: (print(f"origin {PORT} served {COUNT[0]}", file=sys.stderr, flush=True), sys.exit(0)))
asyncio.run(main())
