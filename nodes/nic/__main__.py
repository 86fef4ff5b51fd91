"""`python -m nodes.nic --config FILE` (started by the launcher)."""

from nodes.runtime import main
from nodes.nic.node import Nic

main(Nic)
