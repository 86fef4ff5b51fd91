"""`python -m nodes.vmm --config FILE` (started by the launcher)."""

from nodes.runtime import main
from nodes.vmm.node import VmmNode

main(VmmNode)
