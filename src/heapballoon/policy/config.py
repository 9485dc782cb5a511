"""The policy file: TOML read with ``tomllib`` into a frozen :class:`PolicyConfig`.

``--policy-file PATH`` (default ``/etc/heapballoon/policy.toml``; a missing *default* file
means the defaults). Every key, its type and range is checked here; the first bad one raises
:class:`PolicyConfigError` with one line naming the key and its line in the file::

    budget = "1800M"            # or "none"; the managed workloads' resident total
    interval_s = 1.0
    idle_tax = 0.75             # an idle byte costs 1/(1-0.75) = 4x an active one
    max_step = "256M"           # most a source's target rises in one tick (state soft)
    min_free = "900M"           # host mode: minFree (default: ESXi's sliding scale)
    budget_min_free = 0.02      # budget mode: minFree as a fraction of the budget
    deadband = "8M"             # smaller changes of a target are not sent
    activity_half_life_s = 30   # how slowly a workload's active fraction falls
    demand_half_life_s = 60     # how slowly its demand (resident + held) falls
    sources = ["guest_free", "heap"]  # VM mode: what may be taken (process mode has heap only)
    proactive = false           # take idle heap until PSI or GC cost says it costs (proactive.py)
    proactive_step = "32M"      # least the proactive aim rises a tick (else half the idle heap left)
    proactive_psi_some = 0.5    # percent of time stalled on memory that counts as a cost
    proactive_gc_cost = 5.0     # percent of a JVM's time in GC that counts as a cost

    [thresholds]                # state boundaries, as multiples of minFree
    high = 4.0
    clear = 1.0
    soft = 0.64
    hard = 0.32

    [psi]                       # /proc/pressure/memory avg10, percent
    soft_some = 10.0
    hard_full = 10.0

    [[workload]]                # first matching rule wins; globs as fnmatch
    match = "orders*"
    shares = 2000
    reservation = "512M"
    limit = "2G"

    [[workload]]                # by Kubernetes pod and container (process mode; all given must match)
    pod = "shop/orders-*"       # namespace/name glob, or the pod's UID
    container = "app"           # container name glob, or its id (or a 12+ hex prefix of it)
    shares = 500
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from dataclasses import dataclass, field

from heapballoon.errors import UsageError
from heapballoon.units import MAX_SIZE_BYTES, format_size, parse_size

DEFAULT_PATH = "/etc/heapballoon/policy.toml"
DEFAULT_SHARES = 1000
MIB = 1 << 20
SOURCES = ("guest_free", "heap")  # VM mode's sources, cheapest first


class PolicyConfigError(UsageError):
    """A policy file that cannot be used; the message is one line naming key and line."""


@dataclass(frozen=True)
class WorkloadIdentity:
    """What rules can select a workload by: its name, and (JVMs in containers) its pod and
    container, "" when not known (docs/containers.md: where each comes from)."""

    name: str
    pod: str = ""  # namespace/name
    pod_uid: str = ""
    container: str = ""  # the container's name
    container_id: str = ""


@dataclass(frozen=True)
class WorkloadRule:
    match: str = "*"
    shares: int = DEFAULT_SHARES
    reservation_bytes: int = 0
    limit_bytes: int | None = None
    pod: str | None = None  # namespace/name glob, or a pod UID
    container: str | None = None  # container name glob, or a container id (12+ hex: a prefix)

    def matches(self, who: WorkloadIdentity) -> bool:
        if not fnmatch.fnmatchcase(who.name, self.match):
            return False
        if self.pod is not None and not (who.pod and fnmatch.fnmatchcase(who.pod, self.pod)
                                         or who.pod_uid and who.pod_uid == self.pod.lower()):
            return False
        if self.container is not None:
            sel = self.container.lower()
            cid = who.container_id
            by_id = cid and (cid == sel or len(sel) >= 12 and cid.startswith(sel))
            if not (by_id or who.container and fnmatch.fnmatchcase(who.container, self.container)):
                return False
        return True


@dataclass(frozen=True)
class Thresholds:
    """State boundaries as multiples of minFree (free ≥ high·minFree is the high state …)."""

    high: float = 4.0
    clear: float = 1.0
    soft: float = 0.64
    hard: float = 0.32


@dataclass(frozen=True)
class PolicyConfig:
    budget_bytes: int | None = None
    interval_s: float = 1.0
    idle_tax: float = 0.75
    max_step_bytes: int = 256 * MIB
    min_free_bytes: int | None = None
    # The budget's minFree. A budget caps the JVMs' RSS, which no kernel enforces: the margin
    # under it needs to cover what they grow in one tick (pre-touched heaps grow only by what
    # a balloon gives back, which the law itself decides). Where the budget stands for a
    # kernel limit (a memory cgroup), the cgroup constraint keeps the larger margin (docs).
    budget_min_free: float = 0.02
    deadband_bytes: int = 8 * MIB
    hysteresis: float = 0.1  # a state improves only once free passes its threshold by 10 %
    activity_half_life_s: float = 30.0  # the active fraction falls slowly (rises at once)
    demand_half_life_s: float = 60.0  # so does a workload's demand (resident + held)
    thresholds: Thresholds = field(default_factory=Thresholds)
    psi_soft_some: float = 10.0
    psi_hard_full: float = 10.0
    proactive: bool = False
    proactive_step_bytes: int = 32 * MIB
    proactive_psi_some: float = 0.5  # percent
    proactive_gc_cost: float = 5.0  # percent
    rules: tuple[WorkloadRule, ...] = ()
    # VM mode: which sources the policy may take from (a source left out is given back and
    # kept at 0): guest free memory through virtio-balloon, idle JVM heap through balloons
    sources: tuple[str, ...] = SOURCES
    # Whether the file says `budget` (even "none"): then it wins over --memory-budget.
    budget_set: bool = False
    source: str = "defaults"  # where it came from, for the log

    def rule_for(self, who: str | WorkloadIdentity) -> WorkloadRule:
        """The first rule that matches a name (or a workload's whole identity)."""
        who = who if isinstance(who, WorkloadIdentity) else WorkloadIdentity(who)
        for rule in self.rules:
            if rule.matches(who):
                return rule
        return WorkloadRule(match="*")

    @property
    def idle_cost(self) -> float:
        """k = 1/(1 − idle_tax): what an idle byte costs relative to an active one."""
        return 1.0 / (1.0 - self.idle_tax)


# ---------------------------------------------------------------- reading

_TOP = {"budget", "interval_s", "idle_tax", "max_step", "min_free", "budget_min_free", "deadband",
        "hysteresis", "activity_half_life_s", "demand_half_life_s", "thresholds", "psi", "workload", "sources",
        "proactive", "proactive_step", "proactive_psi_some", "proactive_gc_cost"}
_THRESHOLDS = {"high", "clear", "soft", "hard"}
_PSI = {"soft_some", "hard_full"}
_RULE = {"match", "shares", "reservation", "limit", "pod", "container"}


def memory_budget_option(policy: str, memory_budget: str | None, policy_file: str | None) -> int | None:
    """``--memory-budget`` of ``heapballoon daemon`` and ``hostd``, in bytes (None: not given);
    UsageError (one line) if it or ``--policy-file`` is given without ``--policy auto``, or bad."""
    if policy != "auto" and (memory_budget is not None or policy_file is not None):
        raise UsageError("--memory-budget and --policy-file need --policy auto")
    return None if memory_budget is None else parse_size(memory_budget)


def load(path: str | None, *, default_missing_ok: bool = True) -> PolicyConfig:
    """Read a policy file. ``None`` or a missing default file gives the defaults."""
    if path is None:
        return PolicyConfig()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as err:
        if default_missing_ok and path == DEFAULT_PATH:
            return PolicyConfig(source=f"defaults ({path} not found)")
        raise PolicyConfigError(f"policy file {path}: not found") from err
    except OSError as err:
        raise PolicyConfigError(f"policy file {path}: {err.strerror or err}") from err
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise PolicyConfigError(f"policy file {path}: not UTF-8 ({err.reason} at byte {err.start})") from err
    return parse(text, source=path)


def parse(text: str, source: str = "<policy>") -> PolicyConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        msg = str(err)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        if m:  # "line N" first, as for every other error of this file
            msg = f"line {m.group(1)}, column {m.group(2)}: {msg[:m.start()]}"
        elif msg.endswith("(at end of document)"):
            msg = f"line {max(1, len(text.splitlines()))} (end of file): {msg[:-len(' (at end of document)')]}"
        raise PolicyConfigError(f"policy file {source}, {msg}") from err
    r = _Reader(text, source)
    r.known(doc, _TOP, "")
    th = doc.get("thresholds", {})
    r.table(th, "thresholds")
    r.known(th, _THRESHOLDS, "thresholds")
    defaults = Thresholds()
    thresholds = Thresholds(**{k: r.number(th, k, getattr(defaults, k), lo=0.0, hi=100.0, section="thresholds")
                               for k in ("high", "clear", "soft", "hard")})
    if not thresholds.high > thresholds.clear > thresholds.soft > thresholds.hard:
        raise r.error("thresholds", "thresholds", "must fall: high > clear > soft > hard")
    psi = doc.get("psi", {})
    r.table(psi, "psi")
    r.known(psi, _PSI, "psi")
    raw_rules = doc.get("workload", [])
    if not isinstance(raw_rules, list):
        raise r.error("workload", "", "must be an array of tables ([[workload]])")
    rules = []
    for i, raw in enumerate(raw_rules):
        r.known(raw, _RULE, "workload", i)
        selectors = {}
        for key in ("match", "pod", "container"):
            if key in raw and (not isinstance(raw[key], str) or not raw[key]):
                raise r.error(key, "workload", "must be a non-empty string (a name or a glob)", i)
            selectors[key] = raw.get(key)
        if not any(selectors.values()):
            raise r.error("match", "workload", "must be a non-empty string (a name or a glob), "
                          "or the rule must name a pod or container", i)
        rules.append(WorkloadRule(
            match=selectors["match"] or "*", pod=selectors["pod"], container=selectors["container"],
            shares=int(r.number(raw, "shares", DEFAULT_SHARES, lo=1, hi=1_000_000, section="workload", index=i,
                                integer=True)),
            reservation_bytes=r.size(raw, "reservation", 0, "workload", i) or 0,
            limit_bytes=r.size(raw, "limit", None, "workload", i),
        ))
        rule = rules[-1]
        if rule.limit_bytes is not None and rule.reservation_bytes > rule.limit_bytes:
            raise r.error("reservation", "workload", f"({format_size(rule.reservation_bytes)}) is more than its "
                          f"limit ({format_size(rule.limit_bytes)})", i)
    budget = r.size(doc, "budget", None, "", none_ok=True)
    return _build(r, doc, budget, thresholds, psi, rules, source)


def _build(r, doc, budget, thresholds, psi, rules, source) -> PolicyConfig:
    default = PolicyConfig()
    return PolicyConfig(
        budget_bytes=budget,
        interval_s=r.number(doc, "interval_s", default.interval_s, lo=0.05, hi=3600.0),
        idle_tax=r.number(doc, "idle_tax", default.idle_tax, lo=0.0, hi=0.99),
        max_step_bytes=r.size(doc, "max_step", default.max_step_bytes, "", positive=True),
        min_free_bytes=r.size(doc, "min_free", None, ""),
        budget_min_free=r.number(doc, "budget_min_free", default.budget_min_free, lo=0.0, hi=0.5),
        deadband_bytes=r.size(doc, "deadband", default.deadband_bytes, ""),
        hysteresis=r.number(doc, "hysteresis", default.hysteresis, lo=0.0, hi=1.0),
        activity_half_life_s=r.number(doc, "activity_half_life_s", default.activity_half_life_s, lo=0.0, hi=86400.0),
        demand_half_life_s=r.number(doc, "demand_half_life_s", default.demand_half_life_s, lo=0.0, hi=86400.0),
        thresholds=thresholds,
        psi_soft_some=r.number(psi, "soft_some", default.psi_soft_some, lo=0.0, hi=100.0, section="psi"),
        psi_hard_full=r.number(psi, "hard_full", default.psi_hard_full, lo=0.0, hi=100.0, section="psi"),
        proactive=r.boolean(doc, "proactive", default.proactive),
        proactive_step_bytes=r.size(doc, "proactive_step", default.proactive_step_bytes, "", positive=True),
        proactive_psi_some=r.number(doc, "proactive_psi_some", default.proactive_psi_some, lo=0.001, hi=100.0),
        proactive_gc_cost=r.number(doc, "proactive_gc_cost", default.proactive_gc_cost, lo=0.001, hi=100.0),
        rules=tuple(rules),
        sources=r.sources(doc),
        budget_set="budget" in doc,
        source=source,
    )


def _short(v) -> str:
    """A value for a one-line error: its repr, cut (a 400-digit number stays readable)."""
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


class _Reader:
    """Checks values and finds the line a key is on (tomllib does not say), for the error."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def line_of(self, key: str, section: str = "", index: int = 0) -> int | None:
        """1-based line of ``key`` in ``[section]`` (the index-th ``[[section]]``), or of the
        section's header when the key is not found."""
        header = None
        seen = -1
        current = ""
        key_re = re.compile(rf"^\s*(?:{re.escape(section)}\.)?{re.escape(key)}\s*=") if key else None
        for n, line in enumerate(self.lines, 1):
            m = re.match(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?", line)
            if m:
                current = m.group(1)
                if current == section:
                    seen += 1
                    if seen == index:
                        header = n
                continue
            in_place = (current == section and (seen == index or not section)) or (current == "" and section)
            if key_re and in_place and key_re.match(line):
                return n
        return header

    def error(self, key: str, section: str, problem: str, index: int = 0) -> PolicyConfigError:
        name = f"{section}.{key}" if section and section != key else key
        if section == "workload":
            name = f"workload[{index}].{key}"
        line = self.line_of(key, section, index)
        at = f", line {line}" if line else ""
        return PolicyConfigError(f"policy file {self.source}{at}: {name} {problem}")

    def table(self, value, section: str) -> None:
        if not isinstance(value, dict):
            raise self.error(section, "", "must be a table")

    def known(self, d: dict, allowed: set[str], section: str, index: int = 0) -> None:
        if not isinstance(d, dict):
            raise self.error(section, "", "must be a table")
        for key in d:
            if key not in allowed:
                raise self.error(key, section, f"is not a known key (known: {', '.join(sorted(allowed))})", index)

    def sources(self, d: dict) -> tuple[str, ...]:
        if "sources" not in d:
            return SOURCES
        v = d["sources"]
        if (not isinstance(v, list) or not v or any(x not in SOURCES for x in v) or len(set(v)) != len(v)):
            raise self.error("sources", "", f"must be a list of distinct names from {list(SOURCES)}, got {v!r}")
        return tuple(x for x in SOURCES if x in v)

    def boolean(self, d: dict, key: str, default: bool) -> bool:
        if key not in d:
            return default
        if not isinstance(d[key], bool):
            raise self.error(key, "", f"must be true or false, got {_short(d[key])}")
        return d[key]

    def number(self, d: dict, key: str, default, lo: float, hi: float, section: str = "", index: int = 0,
               integer: bool = False):
        if key not in d:
            return default
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            raise self.error(key, section, f"must be {'an integer' if integer else 'a number'}, got {v!r}", index)
        if not (lo <= v <= hi) or (isinstance(v, float) and not math.isfinite(v)):
            raise self.error(key, section, f"must be between {lo:g} and {hi:g}, got {_short(v)}", index)
        return v if integer else float(v)

    def size(self, d: dict, key: str, default, section: str, index: int = 0, positive: bool = False,
             none_ok: bool = False):
        if key not in d:
            return default
        v = d[key]
        if none_ok and isinstance(v, str) and v.strip().lower() in ("none", "off"):
            return None
        if isinstance(v, bool):
            v = None
        try:
            if isinstance(v, int):
                out = v
                if out < 0:
                    raise UsageError("negative")
            elif isinstance(v, str):
                out = parse_size(v)
            else:
                raise UsageError("not a size")
        except UsageError as err:
            hint = ' or "none"' if none_ok else ""
            raise self.error(key, section, f'must be a size like "512M" or a number of bytes{hint}, got {_short(v)}',
                             index) from err
        if out > MAX_SIZE_BYTES:  # as for strings: no size past 1 PiB (a 400-digit int overflowed the tick)
            raise self.error(key, section, f"must be at most {format_size(MAX_SIZE_BYTES)}, got {_short(v)}", index)
        if positive and out <= 0:
            raise self.error(key, section, f"must be more than 0, got {v!r}", index)
        return out
