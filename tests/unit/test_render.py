"""`heapballoon status` as a person sees it: at 80 and 120 columns nothing ends in an ellipsis
and no line is wider than the terminal, whatever the names, collectors and reasons."""

import io

import pytest
from rich.console import Console

from heapballoon.render import render_plain, render_status, short_size
from heapballoon.status import DriverStatus, HostStatus, JvmStatus, NodeStatus

MIB, GIB = 1 << 20, 1 << 30


def _jvm(pid: int, name: str, gc: str = "G1", **over) -> JvmStatus:
    fields = dict(pid=pid, name=name, gc=gc, jvm_version="21.0.8", connected=True, heap_max_bytes=GIB,
                  heap_committed_bytes=GIB, heap_used_bytes=400 * MIB, live_bytes=200 * MIB, live_source="G1 Old",
                  excess_bytes=700 * MIB, balloon_max_bytes=700 * MIB, target_bytes=512 * MIB, flaps=0,
                  balloon_bytes=512 * MIB, reclaimed_bytes=510 * MIB, reclaim="direct", address_mode="jni",
                  chunks=64, gc_count=12, gc_time_ms=300, moved_chunks=0, drift_pages=0)
    fields.update(over)
    return JvmStatus(**fields)


def _driver_body(**node_over) -> dict:
    jvms = (_jvm(4194301, "orders-service-eu-west-1"), _jvm(512, "billing", "Shenandoah", reclaim="ksm"),
            _jvm(77, "io.heapballoon.demo.ChurnApp", "ZGC", heap_max_bytes=16 * GIB, heap_committed_bytes=16 * GIB,
                 target_bytes=12 * GIB, balloon_bytes=11 * GIB + 512 * MIB, reclaimed_bytes=11 * GIB))
    node = dict(target_bytes=2 * GIB, balloon_bytes=12 * GIB, reclaimed_bytes=12 * GIB, ksm="active",
                ksm_boosted=False, zero_pfn_known=True, bad_messages=0)
    node.update(node_over)
    return DriverStatus(jvms, NodeStatus(**node)).to_dict()


def _render(body: dict, width: int, terminal: bool = True) -> str:
    out = io.StringIO()
    render_status(body, Console(file=out, width=width, force_terminal=terminal, color_system=None))
    return out.getvalue()


def _check_fits(text: str, width: int) -> None:
    assert "…" not in text, text
    for line in text.splitlines():
        assert len(line) <= width, f"{len(line)} > {width}: {line!r}\n{text}"


def _column(text: str, header: str) -> str:
    """The characters of one column of the first table, read down its rows, spaces removed."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if f" {header} " in f" {line} ")
    start = lines[head].index(header)
    end = start + len(header)
    while end < len(lines[head]) and lines[head][end] == " ":
        end += 1
    cells = []
    for line in lines[head + 2:]:
        if not line.strip() or not line[:1].isspace() and not line[:1].isdigit():
            break
        cells.append(line[start:end - 2].strip())
    return "".join(cells)


@pytest.mark.parametrize("width", [80, 120])
def test_driver_status_fits_without_ellipsis(width):
    text = _render(_driver_body(), width)
    print(text)
    _check_fits(text, width)
    for header in ("PID", "NAME", "TARGET", "BALLOON", "FREED", "LIVE"):
        assert header in text
    # a name may fold onto the next line, but every character is there
    assert _column(text, "NAME") == "orders-service-eu-west-1billingio.heapballoon.demo.ChurnApp"
    assert "4194301" in text and "512M" in text and "11G" in text


def test_wide_terminal_keeps_every_column_and_narrow_one_says_what_it_dropped():
    wide, narrow = _render(_driver_body(), 120), _render(_driver_body(), 80)
    for header in ("GC", "MAX", "COMMIT", "MODE"):
        assert header in wide.split("\n", 3)[1] or header in wide
    assert "Shenandoah" in wide and "too narrow" not in wide
    assert "too narrow for" in narrow  # and the legend names the columns it left out


@pytest.mark.parametrize("width", [80, 120])
def test_policy_line_reason_column_and_unmet_target(width):
    body = _driver_body(unmet_bytes=2 * GIB, unmet_reason="no JVM has room for a balloon: 100 heaps of 128 MiB "
                        "hold their 64 MiB headroom above the live set")
    body["node"].update(policy="auto", policy_state="soft: 312 MiB to find", budget_bytes=1800 * MIB)
    for j, reason in zip(body["jvms"], ("shares 1000, active 12%", "floor: live + headroom",
                                         "pinned by `heapballoon target 77 12G`")):
        j["target_reason"] = reason
    text = _render(body, width)
    print(text)
    _check_fits(text, width)
    assert "soft: 312 MiB to find" in text
    assert "REASON" in text and "floor: live + headroom" in " ".join(text.split())
    assert "target not met: 2.0 GiB short" in text


def test_no_reason_column_when_no_row_has_one():
    assert "REASON" not in _render(_driver_body(), 120)


@pytest.mark.parametrize("width", [80, 120])
def test_vm_status_fits(width):
    vm = dict(name="web-frontend-production", pid=7, memory_bytes=GIB, reclaim="pfn", target_bytes=400 * MIB,
              balloon_bytes=400 * MIB, reclaimed_bytes=398 * MIB, host_resident_bytes=600 * MIB, pause_ms_p50=0.4,
              pause_ms_p99=12.25, pause_breakdown_ms={}, pauses=3, pause_ms_sum=4.5, pause_ms_per_gib=0.0,
              guest_pause_ms_sum=0.0, guest_pause_ms_per_gib=0.0, pause_window=3, engine="short",
              soft_dirty=False, drift_pages=0, connected=True, guest_hello=True, guest_balloon_bytes=None,
              guest_target_bytes=None, totals_pages={}, jvms=[_jvm(300, "orders").to_dict()], balloon_max_bytes=None)
    body = {"jvms": [], "vms": HostStatus.from_dict({"vms": [vm]}).to_dict()["vms"]}
    text = _render(body, width)
    print(text)
    _check_fits(text, width)
    assert "web-frontend-production" in "".join(text.split()) and "RESIDENT" in text and "12.2ms" in text


def test_short_size():
    assert [short_size(v) for v in (0, 512, 48 * MIB, 1536 * MIB, 512 * MIB, 999 * MIB, 1000 * MIB)] == \
        ["0", "512B", "48M", "1.5G", "512M", "999M", "1.0G"]


def test_piped_status_keeps_each_explanation_on_one_line():
    """Piped into grep or a log, a VM policy line is one line whatever its length."""
    vm = dict(name="pa", pid=7, memory_bytes=GIB, reclaim="pfn", target_bytes=544 * MIB, balloon_bytes=544 * MIB,
              reclaimed_bytes=543 * MIB, host_resident_bytes=431 * MIB, policy_reason="active 77%, shares 1000: "
              "at its floor (live+headroom)", jvms=[])
    body = {"jvms": [], "vms": [vm], "vm_policy": "low: 59.7 MiB to find, 59.4 MiB unmet (set by budget); budget "
            "1.4 GiB, resident 1.4 GiB; budget unmet by 59.4 MiB: the others are at their floors (live set + headroom)"}
    text = _render(body, 80, terminal=False)
    print(text)
    assert any(line.startswith("VM policy: low:") and line.rstrip().endswith("(live set + headroom)")
               for line in text.splitlines())
    assert "  pa: guest free 0 B + heap 544.0 MiB: active 77%, shares 1000: at its floor (live+headroom)" in text


HOSTILE = ("[/x]", "evil\x1b[2J\x1b]0;owned\x07", "[bold red]fake[/bold red]", "line\nFAKE LOG LINE", "\u202eesrever",
           "trail\\")


@pytest.mark.parametrize("terminal", [True, False])
def test_hostile_names_in_status_are_text(terminal):
    """Hostile input row 11: names from an agent's hello or a guest's guest_status are text, never
    markup or terminal escapes: "[/x]" does not crash status (MarkupError), no escape sequence
    or newline of a name reaches the operator's terminal, and the brackets show as typed."""
    jvms = tuple(_jvm(100 + i, name) for i, name in enumerate(HOSTILE))
    body = DriverStatus(jvms, NodeStatus(target_bytes=0, balloon_bytes=0, reclaimed_bytes=0, ksm="off",
                                         ksm_boosted=False, zero_pfn_known=True, bad_messages=0)).to_dict()
    vms = [dict(name=name, memory_bytes=GIB, target_bytes=0, balloon_bytes=0, reclaimed_bytes=0,
                host_resident_bytes=GIB, pause_ms_p99=1.0, policy_reason=f"why {name}",
                jvms=[_jvm(7, name).to_dict()]) for name in HOSTILE]
    host = {"vms": vms, "vm_policy": "auto [/x]", "left_alone": {HOSTILE[1]: "because [/x]"}}
    for b in (body, host):
        out = _render(b, 200, terminal)
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert "FAKE LOG LINE" not in out.replace("line?FAKE LOG LINE", "")  # the newline became "?"
        assert "[/x]" in out and "[bold red]fake[/bold red]" in out
        plain = render_plain(b, 200)
        assert "\x1b" not in plain and "\u202e" not in plain and "line?FAKE LOG LINE" in plain
