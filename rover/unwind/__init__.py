"""Unwinding user stacks without frame pointers, with the files' DWARF CFI (.eh_frame).

Each file's CFI is decoded once (``cfi.py``, ``cfi_table.py``, ``tables.py``),
turned into the rows the kernel walks (``kernel_rows.py``) and loaded into BPF
maps shared by every process mapping the file, with each process's mapping
table (``kernel_tables.py``); the walk itself runs in the BPF program
(``bpf/cfi_walk.h``). ``modes.py`` builds the engine for an unwinding mode
(``frame_pointer``, ``eh_frame``, ``auto``: ``frame_pointers.py`` decides per
process). ``unwinder.py`` is the same walk in user space over a snapshot, with
DWARF expressions evaluated in full: the reference the tests hold the kernel to.
"""
