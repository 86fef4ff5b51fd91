"""`python -m nodes.disk --config FILE` (started by the launcher)."""

from nodes.runtime import main
from nodes.disk.node import Disk

main(Disk)
