"""The memory policy shared by both daemons: who gives how much memory, and why. Pure, no I/O.

The node driver (``heapballoon daemon --policy auto``, JVMs as workloads, ``heap`` sources) and
hostd (``heapballoon hostd --policy auto``, VMs as workloads, ``guest_free`` then ``heap``
sources) each build :class:`Observations` from their readers, call :func:`tick` once per
interval, keep the returned :class:`PolicyState` for the next call and apply the
:class:`Decisions` (per workload, per source, a target in bytes and a reason).

Stable API (other packages import only these names)::

    from heapballoon.policy import (
        PolicyConfig, PolicyConfigError, load_config, parse_config, DEFAULT_POLICY_PATH,
        HostObservation, GroupObservation, SourceObservation, WorkloadObservation, Observations,
        PolicyState, Decisions, WorkloadDecision, SourceDecision,
        tick, summary_line, explain_text, state_text, SOURCE_KINDS, STATES,
    )

    config = load_config(path)                 # PolicyConfigError: one line, key and line
    state = PolicyState()
    state, decisions = tick(config, state, observations, now_s)
    log.info("%s", summary_line(decisions))
    for w in decisions.workloads:              # w.key, w.target_bytes, w.target_of("heap"), w.reason
        ...

Modules: ``model`` (the dataclasses), ``law`` (the control law, explained in its docstring),
``groups`` (each limited cgroup's own aim), ``config`` (the TOML policy file), ``explain`` (text).
"""

from heapballoon.policy.config import DEFAULT_PATH as DEFAULT_POLICY_PATH
from heapballoon.policy.config import PolicyConfig, PolicyConfigError, WorkloadRule
from heapballoon.policy.config import load as load_config
from heapballoon.policy.config import parse as parse_config
from heapballoon.policy.explain import explain_text, state_text, summary_line, workload_line
from heapballoon.policy.law import effective_budget, esxi_min_free_bytes, tick
from heapballoon.policy.model import (
    SOURCE_KINDS, STATES, Decisions, GroupDecision, GroupObservation, HostObservation, Observations, PolicyState,
    SourceDecision, SourceObservation, WorkloadDecision, WorkloadObservation,
)

__all__ = [
    "DEFAULT_POLICY_PATH", "PolicyConfig", "PolicyConfigError", "WorkloadRule", "load_config", "parse_config",
    "explain_text", "state_text", "summary_line", "workload_line", "effective_budget", "esxi_min_free_bytes",
    "tick", "SOURCE_KINDS", "STATES", "Decisions", "GroupDecision", "GroupObservation", "HostObservation",
    "Observations", "PolicyState",
    "SourceDecision", "SourceObservation", "WorkloadDecision", "WorkloadObservation",
]
