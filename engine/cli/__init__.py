"""The `facechain` command: everything the engine does, without Discord, one module per command group.

Other tools call the `--json` forms; keep their flags and keys stable. Errors meant for people
print one line on stderr and exit 2.
"""

from engine.cli.parser import main

__all__ = ["main"]
