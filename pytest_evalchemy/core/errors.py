"""Errors a user can act on: each says where the problem is and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One problem in a file: where (a JSON path such as ``tasks.arc_easy.limit`` or
    ``line 3, column 5``) and what is wrong."""

    file: Path | None
    where: str
    message: str

    def __str__(self) -> str:
        prefix = str(self.file) if self.file is not None else "<config>"
        if self.where:
            prefix = f"{prefix}: {self.where}"
        return f"{prefix}: {self.message}"


class EvalchemyError(Exception):
    """Base class of the errors the plugin reports without a traceback."""


class ConfigError(EvalchemyError):
    """The config file cannot be used; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        head = (
            "invalid evalchemy config"
            if len(self.problems) == 1
            else (f"invalid evalchemy config ({len(self.problems)} problems)")
        )
        return head + ":\n" + "\n".join(f"  {p}" for p in self.problems)


class EndpointError(EvalchemyError):
    """The endpoint cannot serve an evaluation; the message says why and what to do."""


class UsageProblem(EvalchemyError):
    """A command-line value or setting is unusable."""
