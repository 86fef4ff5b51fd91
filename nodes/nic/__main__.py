"""`python -m nodes.nic --config FILE` (started by the launcher)."""

from nodes.nic.node import Nic
from nodes.runtime import main

main(Nic)
