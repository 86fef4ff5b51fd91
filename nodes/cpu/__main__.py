"""`python -m nodes.cpu run PROGRAM.elf [--stats FILE.json] [-- ARGS...]`: the standalone runner;
`python -m nodes.cpu --config FILE`: the CPU node of a cluster (started by the launcher)."""

import sys

if "--config" in sys.argv[1:] and (len(sys.argv) < 2 or sys.argv[1] != "run"):
    from nodes.cpu.node import CpuNode
    from nodes.runtime import main as node_main

    node_main(CpuNode)
else:
    from nodes.cpu.standalone import main

    main()
