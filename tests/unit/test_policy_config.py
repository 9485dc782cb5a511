"""The policy file (heapballoon.policy.config): defaults, globs, and one-line errors that name
the key and its line."""

import pytest

from heapballoon.policy import DEFAULT_POLICY_PATH, PolicyConfig, PolicyConfigError, load_config, parse_config

MIB = 1 << 20


def test_a_full_file_reads():
    cfg = parse_config('''
budget = "1800M"
interval_s = 2
idle_tax = 0.5
max_step = "128M"
[thresholds]
high = 3.0
[psi]
soft_some = 20
[[workload]]
match = "orders*"
shares = 2000
reservation = "256M"
limit = "1G"
''')
    assert cfg.budget_bytes == 1800 * MIB and cfg.budget_set and cfg.interval_s == 2.0
    assert cfg.idle_cost == 2.0 and cfg.max_step_bytes == 128 * MIB and cfg.thresholds.high == 3.0
    assert cfg.psi_soft_some == 20.0
    assert cfg.rule_for("orders-7").shares == 2000 and cfg.rule_for("orders-7").limit_bytes == 1024 * MIB
    assert cfg.rule_for("billing").shares == 1000 and cfg.rule_for("billing").limit_bytes is None


def test_defaults_and_a_missing_default_file():
    assert parse_config("") == PolicyConfig(source="<policy>")
    assert load_config(None) == PolicyConfig()
    if not __import__("os").path.exists(DEFAULT_POLICY_PATH):
        assert load_config(DEFAULT_POLICY_PATH).rules == () and "defaults" in load_config(DEFAULT_POLICY_PATH).source


def test_a_missing_named_file_is_an_error(tmp_path):
    with pytest.raises(PolicyConfigError, match="not found"):
        load_config(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("text, key, line", [
    ('budget = "1G"\nidle_taks = 0.5\n', "idle_taks", 2),
    ('budget = "lots"\n', "budget", 1),
    ('\n\nidle_tax = 1.5\n', "idle_tax", 3),
    ('[thresholds]\nhigh = 0.5\n', "thresholds", 1),
    ('[thresholds]\nsoft = "x"\n', "thresholds.soft", 2),
    ('[[workload]]\nmatch = "a"\n[[workload]]\nmatch = "b"\nshares = -1\n', "workload[1].shares", 5),
    ('[[workload]]\nshares = 5\n', "workload[0].match", 1),
    ('[[workload]]\nmatch = "a"\ncolour = "red"\n', "workload[0].colour", 3),
    ('interval_s = true\n', "interval_s", 1),
    ('budget = [\n', "", 1),
    ('a = 1\nb = = 2\n', "", 2),
    ('budget = "1G"\nsources = ["heap", "swap"]\n', "sources", 2),
    ('sources = []\n', "sources", 1),
    ('sources = "heap"\n', "sources", 1),
])
def test_bad_files_give_one_line_naming_key_and_line(text, key, line):
    with pytest.raises(PolicyConfigError) as err:
        parse_config(text, source="p.toml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("policy file p.toml")
    assert key in msg and f"line {line}" in msg


def test_budget_none_is_said_and_lifts_the_budget():
    cfg = parse_config('budget = "none"')
    assert cfg.budget_set and cfg.budget_bytes is None


def test_sources_default_to_both_and_are_kept_in_cost_order():
    assert parse_config("").sources == ("guest_free", "heap")
    assert parse_config('sources = ["heap"]\n').sources == ("heap",)
    assert parse_config('sources = ["heap", "guest_free"]\n').sources == ("guest_free", "heap")


@pytest.mark.parametrize("text, key, line", [
    ("budget = " + "9" * 400 + "\n", "budget", 1),
    ("\nmax_step = 1125899906842625\n", "max_step", 2),
    ('[[workload]]\nmatch = "a"\nreservation = ' + "1" * 30 + "\n", "workload[0].reservation", 3),
    ('[[workload]]\nmatch = "a"\nreservation = "2G"\nlimit = "1G"\n', "workload[0].reservation", 3),
    ("interval_s = " + "9" * 400 + "\n", "interval_s", 1),
])
def test_hostile_sizes_are_one_line_errors(text, key, line):
    """Hostile input row 14: integer sizes get the 1 PiB cap strings get (a 400-digit budget
    passed, then overflowed the tick and the process-mode driver exited), and a reservation
    above its limit is refused. One short line naming the key, never the 400 digits."""
    with pytest.raises(PolicyConfigError) as err:
        parse_config(text, source="p.toml")
    msg = str(err.value)
    assert "\n" not in msg and key in msg and f"line {line}" in msg and len(msg) < 200, msg


def test_sizes_up_to_1_pib_and_reservation_up_to_limit_still_read():
    cfg = parse_config(f'budget = {1 << 50}\n[[workload]]\nmatch = "a"\nreservation = "1G"\nlimit = "1G"\n')
    assert cfg.budget_bytes == 1 << 50 and cfg.rules[0].reservation_bytes == cfg.rules[0].limit_bytes


def test_rules_by_pod_and_container_issue_18():
    from heapballoon.policy.config import WorkloadIdentity

    cfg = parse_config('[[workload]]\npod = "shop/orders-*"\ncontainer = "app"\nshares = 500\n'
                       '[[workload]]\ncontainer = "4f0e6c3a8b2d"\nlimit = "1G"\n'
                       '[[workload]]\npod = "1a2b3c4d-0000-4000-8000-00000000abcd"\nreservation = "256M"\n')
    cid = "4f0e6c3a8b2d" + "0" * 52
    uid = "1a2b3c4d-0000-4000-8000-00000000abcd"
    orders = WorkloadIdentity("jvm", pod="shop/orders-7d9f", pod_uid=uid, container="app", container_id=cid)
    assert cfg.rule_for(orders).shares == 500
    assert cfg.rule_for(WorkloadIdentity("jvm", pod="shop/orders-7d9f", container="sidecar",
                                         container_id=cid)).limit_bytes == 1 << 30  # by id prefix
    assert cfg.rule_for(WorkloadIdentity("jvm", pod_uid=uid)).reservation_bytes == 256 << 20  # by UID
    assert cfg.rule_for(WorkloadIdentity("jvm")).shares == 1000 and cfg.rule_for("jvm").limit_bytes is None
    assert cfg.rule_for(WorkloadIdentity("jvm", container_id="4f0e6c3a" + "0" * 56)).limit_bytes is None  # 8 hex: no


def test_a_rule_must_select_something():
    with pytest.raises(PolicyConfigError, match=r"line 1: workload\[0\].match must be .* or the rule must name a pod"):
        parse_config('[[workload]]\nshares = 5\n')
    with pytest.raises(PolicyConfigError, match=r"workload\[0\].pod must be a non-empty string"):
        parse_config('[[workload]]\npod = 3\n')
