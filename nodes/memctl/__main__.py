"""`python -m nodes.memctl --config FILE`: the memory controller node."""

from nodes.memctl.node import MemctlNode
from nodes.runtime import main

main(MemctlNode)
