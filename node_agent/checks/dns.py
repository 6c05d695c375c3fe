"""``dns``: a name resolves (to a superset of ``expect``)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Literal

from pydantic import Field, field_validator

from node_agent.checks import InstanceModel, Outcome, RunContext, validate_instance


class DnsInstance(InstanceModel):
    name: str = Field(min_length=1, max_length=253)
    record_type: Literal["A", "AAAA"] = "A"
    expect: list[str] = Field(default_factory=list)

    @field_validator("expect")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(a)) for a in value]


class DnsCheck:
    def parse(self, instance: dict[str, Any], init_config: dict[str, Any]) -> DnsInstance:
        parsed: DnsInstance = validate_instance(DnsInstance, instance)
        return parsed

    async def run(self, instance: DnsInstance, context: RunContext) -> Outcome:
        family = socket.AF_INET if instance.record_type == "A" else socket.AF_INET6
        label = f"dns {instance.record_type} {instance.name}"
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                instance.name, None, family=family, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            return Outcome(errors=[f"{label}: {exc.strerror or exc}"])
        found = sorted({str(ipaddress.ip_address(info[4][0])) for info in infos})
        missing = [a for a in instance.expect if a not in found]
        if missing:
            return Outcome(errors=[f"{label}: resolved to {found}, missing {missing}"])
        return Outcome(errors=[], output=", ".join(found))
