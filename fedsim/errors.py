"""The one exception type for bad user input.

Every check on a scenario, a sweep file or a command-line value raises
:class:`ScenarioError` with the path of the offending field (``clients[1].service.rate``)
and a sentence saying what is allowed. The CLI prints ``str(error)`` on one line and exits 2.
"""

from __future__ import annotations


class ScenarioError(ValueError):
    """Invalid user input, located by its field path.

    ``str(err)`` is ``"<path>: <message>"``, a single line.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class RunStopped(RuntimeError):
    """A run that stopped before its horizon for a reason other than bad input (training that
    diverged, say). ``str(err)`` is one line; the CLI prints it and exits with status 1, and
    what the run had written so far is kept."""


class RunFailed(RuntimeError):
    """A run that failed part-way for a reason found only while it ran (a user's model that
    raises, say). ``str(err)`` is one line naming the component; the CLI prints it, exits with
    status 1 and publishes nothing (the cause, ``__cause__``, is shown with ``--debug``)."""
