"""`hwemu console NAME`: attach the terminal to a UART of a running cluster
(DESIGN.md §3, Devices: the console is a TCP port on loopback).

It asks the orchestrator (``ctl_status``) for the node's ``tcp_port``, then
copies the console to stdout and stdin to the console, like
``nc 127.0.0.1 PORT``, until either side ends (EOF) or Ctrl-C. With
``--timeout S`` it leaves after S seconds, and the end of stdin no longer
ends the session (``echo hello | hwemu console uart0 --timeout 2`` types a
line and shows two seconds of output): a bounded session for scripts.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import trio
import typer

from orchestrator.cli.cluster import _call
from orchestrator.cli.common import RunDir, fail, run_dir_of

EXAMPLES = ["hwemu console uart0                       # Ctrl-C leaves",
            "echo hello | hwemu console uart0 --timeout 2",
            "hwemu console uart1 --timeout 5 < /dev/null  # five seconds of os2's console"]


def console(
    name: Annotated[str, typer.Argument(metavar="UART", help="The uart node to attach to (e.g. uart0).")],
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.0, help="Leave after this many seconds; the end of stdin then does not end "
                                   "the session (0: stay until EOF or Ctrl-C).")] = 0.0,
    run_dir: RunDir = None,
) -> None:
    """Attach to a UART's console: its output on stdout, stdin typed into it (Ctrl-C or EOF leaves)."""
    rd = run_dir_of(run_dir)
    status = _call(rd, "ctl_status")
    nodes = {n["name"]: n for n in status["nodes"]}
    node = nodes.get(name)
    if node is None:
        fail(f"no node {name!r} in the cluster in {rd} (nodes: {', '.join(sorted(nodes)) or 'none'})")
    if node["kind"] != "uart":
        uarts = sorted(n for n, v in nodes.items() if v["kind"] == "uart")
        fail(f"node {name!r} is a {node['kind']}, not a uart (uarts: {', '.join(uarts) or 'none'})")
    port = node["stats"].get("tcp_port")
    if not node["alive"] or not port:
        fail(f"uart {name!r} is {node['state']}: it has no console port now (see `hwemu status`)")
    try:
        trio.run(_attach, port, timeout)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one leaves a console
    except OSError as exc:
        fail(f"cannot connect to the console of {name} at 127.0.0.1:{port}: {exc.strerror or exc}")


async def _attach(port: int, timeout: float = 0.0) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as nursery:
        if timeout:
            nursery.cancel_scope.deadline = trio.current_time() + timeout

        async def console_to_stdout() -> None:
            out = sys.stdout.buffer
            try:
                while data := await stream.receive_some(65536):
                    out.write(data)
                    out.flush()
            except (trio.BrokenResourceError, BrokenPipeError):
                pass  # the node went away, or our reader did (`| head`): the session is over
            nursery.cancel_scope.cancel()

        async def stdin_to_console() -> None:
            # a thread, since stdin may be a tty, a pipe or a file, and only
            # pipes and ttys can be waited on by trio
            try:
                while data := await trio.to_thread.run_sync(os.read, 0, 4096, abandon_on_cancel=True):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass
            if not timeout:  # bounded by --timeout: what the console prints after our input still shows
                nursery.cancel_scope.cancel()

        nursery.start_soon(console_to_stdout)
        nursery.start_soon(stdin_to_console)
