"""Who may start what on a shared GPU host: the administrator's policy, per user, group and default.

Pure. ``c.Broker.policy`` is ``{"default": RULE, "groups": {GROUP: RULE}, "users": {NAME: RULE}}`` where a
RULE is ``{"environments": [NAMES] | "*", "max_gpus": N, "max_kernels": N}`` (a missing limit: none). A
user's own rule wins; otherwise the most permissive of their groups' rules; otherwise the default. With no
policy at all, everyone may use every environment without limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jupyter_gpuenv.errors import NotPermitted

_RULE_KEYS = {"environments", "max_gpus", "max_kernels"}


@dataclass(frozen=True)
class Rule:
    environments: frozenset[str] | None = None  # None: every environment
    max_gpus: int | None = None
    max_kernels: int | None = None

    def allows(self, environment: str) -> bool:
        return self.environments is None or environment in self.environments


def _limit(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(a, b)


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping with {', '.join(sorted(_RULE_KEYS))}")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(repr, unknown)))}")
    envs = raw.get("environments", "*")
    if envs != "*" and not (isinstance(envs, list) and all(isinstance(e, str) for e in envs)):
        raise ValueError(f"{where}: 'environments' must be a list of environment names or '*'")
    limits = {}
    for key in ("max_gpus", "max_kernels"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{where}: {key!r} must be a whole number of at least 0")
        limits[key] = value
    return Rule(None if envs == "*" else frozenset(envs), **limits)


@dataclass(frozen=True)
class Policy:
    default: Rule = Rule()
    groups: tuple[tuple[str, Rule], ...] = ()
    users: tuple[tuple[str, Rule], ...] = ()

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Policy:
        """ValueError with a sentence for a malformed policy (the broker refuses to start with it)."""
        unknown = set(raw) - {"default", "groups", "users"}
        if unknown:
            raise ValueError(f"c.Broker.policy: unknown key(s) {', '.join(sorted(map(repr, unknown)))}")
        default = _rule(raw.get("default", {}), "c.Broker.policy['default']")
        groups = tuple((g, _rule(r, f"c.Broker.policy['groups'][{g!r}]")) for g, r in (raw.get("groups") or {}).items())
        users = tuple((u, _rule(r, f"c.Broker.policy['users'][{u!r}]")) for u, r in (raw.get("users") or {}).items())
        return cls(default, groups, users)

    def rule_for(self, user: str, groups: list[str]) -> Rule:
        for name, rule in self.users:
            if name == user:
                return rule
        mine = [rule for name, rule in self.groups if name in groups]
        if not mine:
            return self.default
        envs: frozenset[str] | None = frozenset()
        for rule in mine:
            envs = None if envs is None or rule.environments is None else envs | rule.environments
        gpus, kernels = mine[0].max_gpus, mine[0].max_kernels
        for rule in mine[1:]:
            gpus, kernels = _limit(gpus, rule.max_gpus), _limit(kernels, rule.max_kernels)
        return Rule(envs, gpus, kernels)


def check_start(rule: Rule, user: str, environment: str, gpus_wanted: int, gpus_held: int, kernels: int) -> None:
    """NotPermitted with a sentence unless ``user`` may start one more kernel of ``environment``."""
    if not rule.allows(environment):
        allowed = ", ".join(sorted(rule.environments or ())) or "none"
        raise NotPermitted(f"{user} may not use the environment {environment!r} on this host (allowed: {allowed})")
    if rule.max_kernels is not None and kernels + 1 > rule.max_kernels:
        raise NotPermitted(
            f"{user} already runs {kernels} container kernel(s), the most this host allows ({rule.max_kernels}): "
            "shut one down first"
        )
    if rule.max_gpus is not None and gpus_held + gpus_wanted > rule.max_gpus:
        raise NotPermitted(
            f"{user} holds {gpus_held} GPU(s) and this kernel asks for {gpus_wanted}; this host allows "
            f"{rule.max_gpus} at once: shut down a kernel that holds one, or use an environment with fewer GPUs"
        )
