"""Rebuild from the agents: what an agent reports of the checks it runs, and which of
those reports a leader may believe.

A leader that starts a term with an empty or lost store asks each agent, while it warms
up, for the full config of every check it runs (API.md, status: ``running_configs``),
so that a lost store loses no check an agent was running. The content is what counts:
a report whose digest is not the one its content hashes to (another build, a mangled
body) is dropped rather than adopted under an identity it does not have, as is a report
that cannot be read as a check config at all (``UnreadableReport``: a field this
dispatcher refuses), each on its own, the others adopted. Adopting the rest (placement,
holders, the change tracker) is the state's: ``ClusterState.adopt_running``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dispatcher.core.model import CheckConfig, Digest, SourceName


@dataclass(frozen=True, slots=True)
class RunningConfig:
    """One check an agent reported running, with the sources it was told hold it."""

    config: CheckConfig
    """Rebuilt from the reported content: its digest is computed here, not taken."""
    sources: frozenset[SourceName]
    reported_digest: Digest
    """The digest the agent sent (what it runs the check as)."""

    @property
    def intact(self) -> bool:
        return self.config.digest == self.reported_digest


def split_intact(
    reports: Iterable[RunningConfig],
) -> tuple[list[RunningConfig], list[RunningConfig]]:
    """The reports whose digest matches their content, and the others (to be dropped)."""
    intact: list[RunningConfig] = []
    mismatched: list[RunningConfig] = []
    for report in reports:
        (intact if report.intact else mismatched).append(report)
    return intact, mismatched


@dataclass(frozen=True, slots=True)
class UnreadableReport:
    """A report that is not a check config this dispatcher accepts (a field it refuses,
    from another build or a broken agent): dropped alone, with a warning."""

    index: int
    """Its place in the status's ``running_configs``."""
    digest: str | None
    """The digest as reported, when it is a string (shortened)."""
    check: str | None
    problems: str
    """What is wrong with it, as a 400 would say (the first few fields)."""
