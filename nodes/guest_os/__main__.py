"""`python -m nodes.guest_os --config FILE` (started by the launcher)."""

from nodes.guest_os.node import OsNode
from nodes.runtime import main

main(OsNode)
