"""The CPU: an RV32IM core with a software TLB and a local page cache (DESIGN.md §3).

`isa` holds the encodings and semantics, `core` the `Core` the node and the
standalone runner drive (its docstring is the contract), `tlb` the TLB,
`translate` the block translator, `standalone` the `python -m nodes.cpu run`
mode.
"""
