"""One module per ``damwatch`` subcommand.

Each module defines ``NAME`` (the subcommand), ``HELP`` (one line for ``damwatch --help``),
``ORDER`` (position in that list), ``configure(parser)`` and ``run(args) -> int``.
Modules import heavy libraries inside ``run`` so that ``damwatch --help`` stays fast.
"""
