"""Unwinding user stacks without frame pointers, with the files' DWARF CFI (.eh_frame).

``engine.DwarfProfilerEngine`` receives registers and stack copies from BPF
(``bpf/*_dwarf.c``) and unwinds them here (``unwinder.py``) with per-file
tables (``cfi.py``, ``cfi_table.py``, ``tables.py``) over each process's
mappings (``process_space.py``). ``modes.py`` picks an engine per unwinding
mode (``frame_pointer``, ``eh_frame``, ``auto``).
"""
