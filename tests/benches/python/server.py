"""An MCP server on the official Python SDK (`pip install mcp`), for roster's
one-shot benchmarks: the same kind of tools as roster's fixture, over Streamable
HTTP on 127.0.0.1. It prints `listening on http://127.0.0.1:PORT` once bound.

Run: python3 server.py PORT
"""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("python-bench")


@server.tool()
def echo(text: str) -> str:
    """Returns its text"""
    return text


@server.tool()
def add(a: int, b: int) -> str:
    """Adds two integers"""
    return str(a + b)


if __name__ == "__main__":
    port = int(sys.argv[1])
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    server.run("streamable-http", host="127.0.0.1", port=port)
