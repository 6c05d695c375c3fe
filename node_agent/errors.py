"""The node agent's branch of the one exception tree (``dispatcher.errors`` draws the
whole tree; request errors of the agent's local server reuse its ``RequestError``s).

::

    ClusterchecksError               dispatcher.errors
    └── AgentError
        ├── DispatcherUnavailable    no answer, a transport error, or 503 no_leader: retry
        │                            (after moving to the next dispatcher URL)
        ├── UnknownNodeError         404 unknown_node: register again with a heartbeat
        ├── DispatcherProtocolError  a reply the agent cannot use (4xx, malformed JSON): log
        └── InstanceError            a check instance the agent cannot run (bad or missing
                                     fields, a program not allowed): the run fails, named
"""

from __future__ import annotations

from dispatcher.errors import ClusterchecksError


class AgentError(ClusterchecksError):
    """Base of every error the node agent raises on purpose."""


class DispatcherUnavailable(AgentError):
    pass


class UnknownNodeError(AgentError):
    pass


class DispatcherProtocolError(AgentError):
    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields
        """The bad field paths a 400 invalid_request named (``running_configs.3.name``):
        what of the request to leave out before sending it again."""


class InstanceError(AgentError):
    """An instance the agent cannot run; the message names the problem."""
