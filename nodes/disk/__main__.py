"""`python -m nodes.disk --config FILE` (started by the launcher)."""

from nodes.disk.node import Disk
from nodes.runtime import main

main(Disk)
