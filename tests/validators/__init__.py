"""Helpers that load the frameworks' own validators offline on a CPU-only Python 3.11 machine (the
`validators` extra and `install.sh`, CI step 2): import shims and the location of unpacked wheels."""
