"""Names of clusters, managed jobs and services: SkyPilot's rule, checked wherever a name
enters (the CLI, every workflow's input, every provider), because names become directory
names, tags, workflow ids and UI links.

Stdlib only: workflows import it inside their sandbox.
"""

from __future__ import annotations

import re

# A letter first, then letters, digits, '-', '_' or '.', ending in a letter or digit.
_NAME = re.compile(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?")
MAX_NAME_LENGTH = 63
RULE = (
    "a letter first, then letters, digits, '-', '_' or '.', ending in a letter or digit, "
    f"at most {MAX_NAME_LENGTH} characters"
)


def name_problem(name: object) -> str | None:
    """Why `name` is not a valid cluster/job/service name, or None when it is."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if len(name) > MAX_NAME_LENGTH:
        return f"{name!r} is {len(name)} characters long; {RULE}"
    if not _NAME.fullmatch(name):
        return f"{name!r} is not a valid name: {RULE}"
    return None


def check_name(name: object, what: str = "name") -> str:
    """name, or ValueError saying what is wrong with it and the rule."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    assert isinstance(name, str)
    return name
