"""The node agent's exception tree (request errors of its local server reuse
``dispatcher.errors``).

::

    AgentError
    ├── DispatcherUnavailable    no answer, a transport error, or 503 no_leader: retry
    │                            (after moving to the next dispatcher URL)
    ├── UnknownNodeError         404 unknown_node: register again with a heartbeat
    └── DispatcherProtocolError  a reply the agent cannot use (4xx, malformed JSON): log
"""

from __future__ import annotations


class AgentError(Exception):
    pass


class DispatcherUnavailable(AgentError):
    pass


class UnknownNodeError(AgentError):
    pass


class DispatcherProtocolError(AgentError):
    pass
