"""`python -m nodes.timer --config FILE` (started by the launcher)."""

from nodes.runtime import main
from nodes.timer.node import Timer

main(Timer)
