"""`hwemu memory borrow|return`: lend frames of one running OS to another
through the VMM and give them back (DESIGN.md §5, ¶39)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from orchestrator.cli.cluster import _call
from orchestrator.cli.common import Json, RunDir, command, new_app, run_dir_of
from orchestrator.cli.vmm import TIMEOUT, show_reports

app = new_app("Borrow memory from one OS for another (¶39).",
              ["hwemu memory borrow --from os1 --to os2 --frames 16", "hwemu memory return --from os1 --to os2"])

From = Annotated[str, typer.Option("--from", help="The OS that lends its frames.")]
To = Annotated[str, typer.Option("--to", help="The OS that borrows them.")]


@command(app, "borrow", ["hwemu memory borrow --from os1 --to os2 --frames 16",
                          "hwemu memory borrow --from os1 --to os2 --frames 16 --json"])
def borrow(
    from_os: From,
    to_os: To,
    frames: Annotated[int, typer.Option("--frames", min=1, help="How many frames.")],
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """The lender's module pins N frames, the VMM takes them (zeroed), the borrower's module adds them."""
    show_reports(_call(run_dir_of(run_dir), "ctl_memory_borrow",
                       {"from_os": from_os, "to_os": to_os, "frames": frames}, TIMEOUT), json_out)


@command(app, "return", ["hwemu memory return --from os1 --to os2",
                          "hwemu memory return --from os1 --to os2 --loan borrow-20261206T120000-abcdef"])
def return_(
    from_os: From,
    to_os: To,
    loan: Annotated[Optional[str], typer.Option("--loan", help="Only this loan (its journal id).")] = None,
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Frames lent FROM an OS TO another go back (the borrower must not be using them)."""
    body = {"from_os": from_os, "to_os": to_os}
    if loan:
        body["loan"] = loan
    show_reports(_call(run_dir_of(run_dir), "ctl_memory_return", body, TIMEOUT), json_out)
