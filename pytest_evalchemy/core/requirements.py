"""Whether the installed lm-eval is one this plugin supports: the plugin relies on some of its
private names, so a release outside the declared range fails in ways that name no version."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "pytest-evalchemy"


def declared_range(dependency: str, distribution: str = DISTRIBUTION) -> str | None:
    """The version range ``distribution`` declares for ``dependency`` (``">=0.4.12,<0.5"``), or
    None when it is not installed as a distribution (a bare checkout on ``sys.path``)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        requires = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return None
    wanted = canonicalize_name(dependency)
    for text in requires:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == wanted and not requirement.marker:
            # Lower bounds first, as people write a range (">=0.4.12,<0.5").
            parts = sorted(map(str, requirement.specifier), key=lambda s: (s[0] != ">", s))
            return ",".join(parts)
    return None


def lm_eval_problem(installed: str | None = None, supported: str | None = None) -> str | None:
    """One line naming the installed and the supported lm-eval when they do not fit, else None."""
    from packaging.specifiers import SpecifierSet

    supported = supported if supported is not None else declared_range("lm-eval")
    if not supported:
        return None
    if installed is None:
        try:
            installed = metadata.version("lm_eval")
        except metadata.PackageNotFoundError:
            installed = None
    fix = f"pip install 'lm-eval[api]{supported}'"
    if installed is None:
        return f"lm-eval is not installed; pytest-evalchemy supports lm-eval {supported}: {fix}"
    if SpecifierSet(supported).contains(installed, prereleases=True):
        return None
    return f"lm-eval {installed} is installed; pytest-evalchemy supports lm-eval {supported}: {fix}"
