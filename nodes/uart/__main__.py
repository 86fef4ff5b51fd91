"""`python -m nodes.uart --config FILE` (started by the launcher)."""

from nodes.runtime import main
from nodes.uart.node import Uart

main(Uart)
