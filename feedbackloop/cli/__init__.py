"""The ``feedbackloop`` command line: the root group (:mod:`.root`), one module per command
group, the options they share (:mod:`.options`) and what else they share (:mod:`.base`).

Commands are thin: parse options, call a library function, print.
"""

from feedbackloop.cli.root import cli, main

__all__ = ["cli", "main"]
