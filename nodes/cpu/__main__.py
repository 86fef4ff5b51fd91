"""`python -m nodes.cpu run PROGRAM.elf [--stats FILE.json] [-- ARGS...]`."""

from nodes.cpu.standalone import main

main()
