"""An example of a test of your own scenario on a real hwemu cluster.

Copy this file (and pytest.ini beside it) into your project and run
``pytest``: the ``cluster`` fixture and the helpers come with the installed
``hwemu`` package (its pytest plugin). ``HWEMU_GUEST`` names the directory of
the guest programs (``guest/build/samples`` of an hwemu checkout, after
``make guest``).
"""

import os
from pathlib import Path

import trio

from hwemu.testing import flow_audit, forward_port, run_program, udp_client, wait_for_console

GUEST = Path(os.environ.get("HWEMU_GUEST", "guest/build/samples"))

# a machine with a CPU, memory, a console, a timer and a network card: one OS on it
MACHINE = {
    "cluster": {"name": "mine"},
    "nodes": {
        "memctl": {"kind": "memctl", "options": {"frames": 1024, "partitions": {"os1": [256, 512]}}},
        "cpu0": {"kind": "cpu"},
        "uart0": {"kind": "uart"},
        "timer0": {"kind": "timer"},
        "nic0": {"kind": "nic"},
        "os1": {"kind": "os", "options": {"memory": [256, 512], "cpu": "cpu0", "memctl": "memctl",
                                          "uart": "uart0", "timer": "timer0", "tick_ms": 10}},
    },
    "routes": {
        "trap:cpu0": "os1", "priv:os1": "cpu0", "mem:cpu0": "memctl", "mem:os1": "memctl",
        "io:os1.uart": "uart0", "irq:uart0": "os1", "io:os1.timer": "timer0", "irq:timer0": "os1",
        "io:os1.nic": "nic0", "irq:nic0": "os1",
    },
}


async def test_hello_prints_its_arguments(cluster):
    orch = await cluster(MACHINE)
    hello = await run_program(orch, GUEST / "hello.elf", ["a", "b"], timeout=60)
    assert hello.code == 0
    assert 'argv[1] = "a"' in hello.text


async def test_the_echo_server_answers_over_udp(cluster):
    orch = await cluster(MACHINE)
    await forward_port(orch, 7000)  # guest port 7000 on a free host port, from the guest's bind on
    async with trio.open_nursery() as nursery:
        done = {}

        async def server():
            done["echo"] = await run_program(orch, GUEST / "udpecho.elf", ["7000"], timeout=60)

        nursery.start_soon(server)
        await wait_for_console(orch, r"udpecho listening on 7000", timeout=30)
        with await udp_client(orch, 7000) as client:
            assert await client.ask(b"hello") == b"hello"
            assert await client.ask(b"quit") == b"bye"
    assert done["echo"].code == 0
    assert "udpecho served 1 datagrams" in done["echo"].text
    audit = await flow_audit(orch)  # every interrupt, trap and I/O message delivered exactly once
    assert audit["ok"], audit["problems"]
