"""The history checker finds each kind of broken guarantee, names it, and passes a clean history."""

import json

import pytest

from orchestrator import checker


class History:
    """Writes history files as the nodes and the chaos client do (one JSON event per line)."""

    def __init__(self, root):
        self.root = root
        self.t = 1_000_000_000
        self.lines: dict[str, list[str]] = {}

    def __call__(self, node, cat, ev, **fields):
        self.t += 1_000_000  # 1 ms apart
        self.lines.setdefault(node, []).append(json.dumps({"t": self.t, "node": node, "cat": cat, "ev": ev,
                                                          **fields}))
        return len(self.lines[node])

    def start(self, node, inc):
        return self(node, "node", "start", kind=node, pid=1, inc=inc)

    def stop(self, node, inc):
        return self(node, "node", "stop", inc=inc)

    def flow(self, sender, receiver, flow, fseqs, deliver=None):
        for n in fseqs:
            self(sender, "flow", "sent", flow=flow, fseq=n, dst=receiver, inc=1)
        for n in (fseqs if deliver is None else deliver):
            self(receiver, "flow", "deliver", flow=flow, fseq=n, src=sender)

    def write(self):
        self.root.mkdir(parents=True, exist_ok=True)
        for node, lines in self.lines.items():
            (self.root / f"{node}.jsonl").write_text("\n".join(lines) + "\n")
        return self.root


def clean(h: History) -> History:
    """A run with every kind of event, all correct: two nodes, a restart, a route change, disk, frames, kv."""
    h.start("timer0", 1)
    h.start("os1", 2)
    h.start("os2", 3)
    h.start("memctl", 4)
    h.start("disk0", 5)
    h("memctl", "frame", "owners", owners={"free": [0, 1, 2, 3], "os1": [4, 5]}, nframes=6)
    h("memctl", "frame", "owner", frames=[0, 1], old="free", new="os2")
    h("memctl", "frame", "grant", space="os2", frame=1, initiator="cpu0", write=True)
    h.flow("timer0", "os1", "irq:timer0", [1, 2, 3])
    h.flow("timer0", "os2", "irq:timer0", [4, 5])  # route change: os2 receives from #4 on
    h.stop("timer0", 1)
    h.start("timer0", 6)  # restarted: its flows start over from 1
    h.flow("timer0", "os2", "irq:timer0", [1, 2])
    h("disk0", "disk", "write", req=7, block=3, count=1, crcs=[111])
    h("disk0", "disk", "write_acked", req=7, block=3, count=1, crc32=111, image="d.img", block_size=512)
    h("disk0", "disk", "write", req=8, block=3, count=2, crcs=[222, 333])
    h("disk0", "disk", "write_acked", req=8, block=3, count=2, crc32=999, image="d.img", block_size=512)
    h("chaos", "client", "request", client="kv", id=1, request="SET a 1")
    h("chaos", "client", "reply", client="kv", id=1, reply="OK")
    h("chaos", "client", "request", client="kv", id=2, request="SET a 2")
    h("chaos", "client", "timeout", client="kv", id=2)  # indeterminate: either answer below is fine
    h("chaos", "client", "request", client="kv", id=3, request="GET a")
    h("chaos", "client", "reply", client="kv", id=3, reply="VALUE 1")
    h("chaos", "client", "request", client="kv", id=4, request="GET a")
    h("chaos", "client", "reply", client="kv", id=4, reply="VALUE 2")
    h("chaos", "client", "request", client="kv", id=5, request="COUNT")
    h("chaos", "client", "reply", client="kv", id=5, reply="COUNT 1")
    h("chaos", "guest", "exit", program="timeshare A1", status=0, sha256="x", expected_sha256="x", length=5,
      expected_length=5)
    h("chaos", "disk", "final", disk="disk0", crcs={"3": 222, "4": 333})
    return h


def pair(tmp_path) -> History:
    """A history of two nodes, os1 (life 1) sending to memctl (life 2)."""
    h = History(tmp_path / "h")
    h.start("os1", 1)
    h.start("memctl", 2)
    return h


def verdict(root):
    rep = checker.check(root)
    return rep, [(v.check, v.what) for v in rep.violations]


def test_a_clean_history_passes_and_counts_what_it_checked(tmp_path):
    rep, found = verdict(clean(History(tmp_path / "h")).write())
    assert found == []
    assert rep.ok
    assert rep.checked["flow_messages_delivered"] == 7
    assert rep.checked["disk_writes_acked"] == 2
    assert rep.checked["kv_requests_answered"] == 4
    assert rep.checked["frame_owner_changes"] == 1


def test_a_lost_message_is_named_by_flow_fseq_and_line(tmp_path):
    h = clean(History(tmp_path / "h"))
    h.flow("os1", "memctl", "mem:os1", [1, 2, 3], deliver=[1, 3])
    rep, found = verdict(h.write())
    assert found == [("flow", "lost")]
    v = rep.violations[0]
    assert (v.subject["flow"], v.subject["fseq"]) == ("mem:os1", 2)
    assert v.where.startswith("os1.jsonl:")
    assert "mem:os1 #2" in v.text()


def test_a_duplicate_is_reported(tmp_path):
    h = clean(History(tmp_path / "h"))
    h.flow("os1", "memctl", "mem:os1", [1, 2], deliver=[1, 2, 2])
    rep, found = verdict(h.write())
    assert found == [("flow", "duplicate")]
    assert rep.violations[0].subject["fseq"] == 2
    assert rep.violations[0].where.startswith("memctl.jsonl:")


def test_a_reordering_is_reported(tmp_path):
    h = clean(History(tmp_path / "h"))
    h.flow("os1", "memctl", "mem:os1", [1, 2, 3], deliver=[1, 3, 2])
    rep, found = verdict(h.write())
    assert found == [("flow", "reordered")]
    assert rep.violations[0].subject["fseq"] == 2


def test_an_acknowledged_message_that_never_arrived_is_lost_even_at_the_tail(tmp_path):
    h = clean(History(tmp_path / "h"))
    h.flow("os1", "memctl", "mem:os1", [1, 2], deliver=[1])
    h("os1", "flow", "acked", flow="mem:os1", upto=2, peer="memctl")
    _, found = verdict(h.write())
    assert found == [("flow", "lost")]


def test_an_unacknowledged_tail_of_a_killed_sender_may_be_missing(tmp_path):
    h = pair(tmp_path)
    h.flow("os1", "memctl", "mem:os1", [1, 2, 3], deliver=[1])
    h.start("os1", 3)  # no "stop" before: killed, its unacknowledged #2, #3 died with it
    h.flow("os1", "memctl", "mem:os1", [1], deliver=[1])
    _, found = verdict(h.write())
    assert found == []


def test_a_message_lost_with_a_receiver_that_lived_on_is_reported(tmp_path):
    h = pair(tmp_path)
    h.flow("os1", "memctl", "mem:os1", [1, 2], deliver=[1])
    h.t += 5_000_000_000  # both live on for 5 s: #2 was not in flight at the end
    h.stop("os1", 1)
    h.stop("memctl", 2)
    _, found = verdict(h.write())
    assert found == [("flow", "lost")]


def test_a_tail_abandoned_for_a_receiver_that_died_may_be_missing_even_when_its_next_life_acks_past_it(tmp_path):
    """A CPU gives up its traps for an OS that crashed (cpu_reset: none reaches the next life); that life
    is told the flow goes on at #3 and acknowledges up to #3 (a real campaign's seed 604 of kill:os)."""
    h = pair(tmp_path)
    h.flow("os1", "memctl", "mem:os1", [1, 2], deliver=[1])
    h.start("memctl", 3)  # the receiver died with #2 in flight
    h("os1", "flow", "abandoned", flow="mem:os1", upto=2, peer="abandoned")
    h.flow("os1", "memctl", "mem:os1", [3])
    h("os1", "flow", "acked", flow="mem:os1", upto=3, peer="memctl")
    h.t += 5_000_000_000
    h.stop("os1", 1)
    h.stop("memctl", 3)
    _, found = verdict(h.write())
    assert found == []


def test_a_tail_abandoned_while_its_receiver_lived_on_is_lost(tmp_path):
    h = pair(tmp_path)
    h.flow("os1", "memctl", "mem:os1", [1, 2], deliver=[1])
    h("os1", "flow", "abandoned", flow="mem:os1", upto=2, peer="abandoned")
    h.t += 5_000_000_000
    h.stop("os1", 1)
    h.stop("memctl", 2)
    _, found = verdict(h.write())
    assert found == [("flow", "lost")]


def test_a_redelivery_to_a_restarted_receiver_of_what_it_never_acknowledged_is_fine(tmp_path):
    h = pair(tmp_path)
    h.flow("os1", "memctl", "mem:os1", [1, 2], deliver=[1, 2])
    h.start("memctl", 3)  # killed and restarted: the sender resends what was not acknowledged
    h("memctl", "flow", "deliver", flow="mem:os1", fseq=2, src="os1")
    _, found = verdict(h.write())
    assert found == []


def test_a_lost_acknowledged_write_names_the_block_and_request(tmp_path):
    h = clean(History(tmp_path / "h"))
    h("disk0", "disk", "write", req=9, block=10, count=1, crcs=[444])
    h("disk0", "disk", "write_acked", req=9, block=10, count=1, crc32=444, image="d.img", block_size=512)
    h("chaos", "disk", "final", disk="disk0", crcs={"3": 222, "4": 333, "10": 0})
    rep, found = verdict(h.write())
    assert ("disk", "lost_write") in found
    v = next(v for v in rep.violations if v.what == "lost_write")
    assert (v.subject["block"], v.subject["req"]) == (10, 9)


def test_a_block_overwritten_by_a_later_unacknowledged_write_is_not_a_loss(tmp_path):
    h = clean(History(tmp_path / "h"))
    h("disk0", "disk", "write", req=9, block=10, count=1, crcs=[444])
    h("disk0", "disk", "write_acked", req=9, block=10, count=1, crc32=444, image="d.img", block_size=512)
    h("disk0", "disk", "write", req=10, block=10, count=1, crcs=[555])  # the node died before the ack
    h("chaos", "disk", "final", disk="disk0", crcs={"3": 222, "4": 333, "10": 555})
    _, found = verdict(h.write())
    assert found == []


def test_a_frame_with_two_owners_is_reported(tmp_path):
    h = clean(History(tmp_path / "h"))
    h("memctl", "frame", "owner", frames=[1], old="os1", new="os3")  # frame 1 is os2's
    rep, found = verdict(h.write())
    assert found == [("frame", "two_owners")]
    assert rep.violations[0].subject["frame"] == 1


def test_a_snapshot_with_a_frame_twice_or_missing_breaks_conservation(tmp_path):
    h = History(tmp_path / "h")
    h("memctl", "frame", "owners", owners={"os1": [0, 1], "os2": [1]}, nframes=3)
    _, found = verdict(h.write())
    assert sorted(found) == [("frame", "not_conserved"), ("frame", "two_owners")]


def test_a_restarted_memctl_that_forgot_an_owner_change_is_reported(tmp_path):
    h = clean(History(tmp_path / "h"))
    h.start("memctl", 9)
    h("memctl", "frame", "owners", owners={"free": [0, 1, 2, 3], "os1": [4, 5]}, nframes=6)  # 0, 1 were os2's
    _, found = verdict(h.write())
    assert found == [("frame", "owner_changed_at_restart")]


def test_a_frame_granted_to_an_os_that_does_not_own_it_is_reported(tmp_path):
    h = clean(History(tmp_path / "h"))
    h("memctl", "frame", "grant", space="os1", frame=0, initiator="cpu0", write=False)
    _, found = verdict(h.write())
    assert found == [("frame", "foreign_read")]


def test_a_non_linearizable_read_is_reported(tmp_path):
    h = clean(History(tmp_path / "h"))
    h("chaos", "client", "request", client="kv", id=6, request="SET b x")
    h("chaos", "client", "reply", client="kv", id=6, reply="OK")
    h("chaos", "client", "request", client="kv", id=7, request="GET b")
    h("chaos", "client", "reply", client="kv", id=7, reply="NOTFOUND")  # an acknowledged SET lost
    rep, found = verdict(h.write())
    assert found == [("kv", "not_linearizable")]
    assert rep.violations[0].subject["request"] == 7


def test_a_timed_out_write_cannot_take_effect_twice(tmp_path):
    h = History(tmp_path / "h")
    for i, (req, reply) in enumerate([("SET k a", None), ("SET k b", "OK"), ("GET k", "VALUE a"),
                                      ("GET k", "VALUE b")], 1):
        h("chaos", "client", "request", client="kv", id=i, request=req)
        if reply is None:
            h("chaos", "client", "timeout", client="kv", id=i)
        else:
            h("chaos", "client", "reply", client="kv", id=i, reply=reply)
    _, found = verdict(h.write())
    assert found == [("kv", "not_linearizable")]  # "a" may land after "b" once, but "b" cannot come back


def test_a_wrong_count_is_reported(tmp_path):
    h = clean(History(tmp_path / "h"))
    h("chaos", "client", "request", client="kv", id=6, request="COUNT")
    h("chaos", "client", "reply", client="kv", id=6, reply="COUNT 3")
    _, found = verdict(h.write())
    assert found == [("kv", "not_linearizable")]


def test_a_guest_output_that_differs_is_reported_unless_the_schedule_killed_it(tmp_path):
    h = clean(History(tmp_path / "h"))
    h("chaos", "guest", "exit", program="timeshare A2", status=0, sha256="y", expected_sha256="x")
    h("chaos", "guest", "exit", program="timeshare A3", status=137, sha256="p", expected_sha256="x",
      killed=True, killed_status=[137], prefix=True)
    rep, found = verdict(h.write())
    assert found == [("output", "differs")]
    assert rep.violations[0].subject["program"] == "timeshare A2"


def test_an_unreadable_line_is_a_violation_not_a_crash(tmp_path):
    h = clean(History(tmp_path / "h"))
    root = h.write()
    with open(root / "os1.jsonl", "a") as f:
        f.write('{"t": 5, "node": "os1", "cat": "fl\n')
    rep, found = verdict(root)
    assert found == [("history", "unreadable")]
    assert rep.violations[0].where == f"os1.jsonl:{len(h.lines['os1']) + 1}"


def test_no_history_at_all_is_an_error(tmp_path):
    with pytest.raises(checker.HistoryError, match="no such history"):
        checker.check(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checker.HistoryError, match="no history files"):
        checker.check(tmp_path / "empty")
