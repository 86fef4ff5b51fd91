"""Where a node appends its fault history: HWEMU_HISTORY_DIR, else its `history` option, else nowhere."""

from nodes.runtime import NodeConfig, history_dir


def cfg(**options):
    return NodeConfig(name="n1", kind="timer", endpoint="ipc:///tmp/x", directory={}, options=options,
                      run_dir="/run/r")


def test_the_environment_names_the_directory_for_every_node(monkeypatch):
    monkeypatch.setenv("HWEMU_HISTORY_DIR", "/h")
    assert history_dir(cfg()) == "/h"
    assert history_dir(cfg(history="/elsewhere")) == "/h"


def test_the_option_turns_it_on_for_one_node(monkeypatch):
    monkeypatch.delenv("HWEMU_HISTORY_DIR", raising=False)
    assert history_dir(cfg()) is None
    assert history_dir(cfg(history=False)) is None
    assert history_dir(cfg(history=True)) == "/run/r/history"
    assert history_dir(cfg(history="/mine")) == "/mine"
