"""What a trap carries and what a resume makes (protocol/hw.py ``peek``, ``mem``,
``stores``, issue #16): the tables and stores a CPU takes are checked, naming
the field, and the guest ABI's table names only registers and lengths a CPU can read."""

from __future__ import annotations

import pytest

from protocol import linux_abi as abi
from protocol.errors import ProtocolError
from protocol.hw import PEEK_MAX, peek_table, store_entry


def test_the_abi_table_groups_its_ranges_by_system_call() -> None:
    table = peek_table(abi.TRAP_PEEK)
    assert table[abi.SYS_SENDTO] == ((11, 12, 0), (14, 0, abi.SOCKADDR_IN_SIZE))
    assert table[abi.SYS_RECVFROM] == ((15, 0, 4),)
    assert abi.SYS_READ not in table  # a read writes the user's buffer: nothing to carry


@pytest.mark.parametrize("entry, field", [
    ([64, 0, 12, 0], "body.peek[0]"),          # x0 is no pointer
    ([64, 32, 12, 0], "body.peek[0]"),         # no x32
    ([64, 11, 40, 0], "body.peek[0]"),         # no x40 to take a length from
    ([64, 11, 0, PEEK_MAX + 1], "body.peek[0]"),
    ([64, 11, 12], "body.peek[0]"),
    ([64, 11, True, 0], "body.peek[0]"),
    ("write", "body.peek[0]"),
])
def test_a_bad_peek_entry_is_refused_naming_it(entry, field) -> None:
    with pytest.raises(ProtocolError) as err:
        peek_table([entry])
    assert (err.value.reason, err.value.field) == ("bad_field", field)


def test_a_store_stays_within_its_page() -> None:
    assert store_entry([7, 4090, b"123456"], "body.stores[0]") == (7, 4090, b"123456")
    for bad in ([7, 4091, b"123456"], [7, -1, b"x"], [-7, 0, b"x"], [7, 0, "text"], [7, 0]):
        with pytest.raises(ProtocolError) as err:
            store_entry(bad, "body.stores[3]")
        assert (err.value.reason, err.value.field) == ("bad_field", "body.stores[3]")
