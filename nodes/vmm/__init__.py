"""The VMM node (DESIGN.md §4): trap reflection, privileged-operation emulation,
virtual interrupts and time slicing of the CPU among OS instances."""
