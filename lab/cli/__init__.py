"""``python -m lab``: the engine from the command line.

Every sub-command is a function ``cmd_NAME(args) -> int`` with its arguments declared in
``lab/cli/parser.py``. Errors a user can act on (bad config, missing data, impossible episodes) are
printed as one line on stderr with exit status 2, never as a traceback.
"""

from lab.cli.parser import main  # noqa: F401
