"""``heapballoon libvirt check|prepare DOMAIN``: what a libvirt domain lacks, and adding it.

This module owns the two commands (the XML rules are domxml's, the libvirt calls conn's).
``check`` judges the domain's persistent definition (what its next boot gets) and, when it
runs, its live XML (what hostd sees now); exit 0 when it takes part, 1 when something is
missing. ``prepare`` adds what is missing to the persistent definition (``virDomainDefineXML``),
is idempotent, ``--dry-run`` prints the XML diff instead, and for a running domain says the
change takes effect at the next boot (a cold boot: ``virsh shutdown`` then ``virsh start``).
"""

from __future__ import annotations

import os

# The subcommands import the libvirt modules when they run: the parser is built in guests too
# (tests/unit/test_guest_compat.py), which have neither libvirt nor its binding.


def default_uri() -> str:
    from heapballoon.libvirt import conn as lv

    return os.environ.get("HEAPBALLOON_LIBVIRT_URI") or lv.DEFAULT_URI


def _domain(args):
    from heapballoon.libvirt import conn as lv

    c = lv.open_conn(args.connect or default_uri())
    return c, lv.lookup(c, args.domain)


def _xmls(dom) -> tuple[str, str | None]:
    """(persistent definition, live XML or None when the domain is not running)."""
    from heapballoon.libvirt import conn as lv

    libvirt = lv.import_binding()
    try:
        active = dom.isActive()
        inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        return inactive, dom.XMLDesc(0) if active else None
    except libvirt.libvirtError as err:
        raise lv.LibvirtError(f"cannot read domain {dom.name()}'s XML: {lv.one_line(err)}") from err


def cmd_check(args) -> int:
    from heapballoon.libvirt import domxml

    c, dom = _domain(args)
    try:
        config, live = _xmls(dom)
        name = dom.name()
    finally:
        c.close()
    _note_kvm_closed(live or config)
    todo = domxml.missing(config)
    if todo:
        print(f"{name}: missing:")
        for item in todo:
            print(f"  - {item}")
        print(f"run `heapballoon libvirt prepare {name}` to add it")
        return 1
    if live is not None and domxml.missing(live):
        print(f"{name}: the definition is ready, but the running domain was started without it: "
              "shut it down and start it again (a reboot inside the guest is not enough)")
        return 1
    print(f"{name}: ready (memfd shared guest RAM, channel {domxml.CHANNEL_PORT})")
    return 0


def _note_kvm_closed(xml: str) -> None:
    """A note when /dev/kvm is closed to libvirt's QEMU user (a host without udev): libvirt 9
    probes QEMU as root, finds KVM, then judges it "not available now" for that user and probes
    QEMU again on every lookup, so every define and start takes seconds to minutes."""
    import os
    import pwd

    from heapballoon.libvirt import conn as lv
    from heapballoon.libvirt import domxml
    from heapballoon.linux.devices import kvm_closed_to

    try:
        uid = lv.dac_uid(domxml.facts(xml).dac_label)
    except domxml.DomainXMLError:
        uid = None  # the checks below say what is wrong with the XML
    if uid is None:
        try:
            uid = pwd.getpwnam(QEMU_USER).pw_uid
        except KeyError:
            return
    try:
        entry = pwd.getpwuid(uid)
        gids = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except KeyError:
        gids = []
    why = kvm_closed_to(uid, gids)
    if why:
        print(f"note: {why}, closed to libvirt's QEMU user (uid {uid}): libvirt then probes QEMU again on "
              "every call, so defines and starts are slow; udev hosts give it group kvm, mode 0660 "
              "(chgrp kvm /dev/kvm; chmod 0660 /dev/kvm)")


QEMU_USER = "libvirt-qemu"  # Debian's default `user` in /etc/libvirt/qemu.conf


def cmd_prepare(args) -> int:
    from heapballoon.libvirt import conn as lv
    from heapballoon.libvirt import domxml

    libvirt = lv.import_binding()
    c, dom = _domain(args)
    try:
        config, live = _xmls(dom)
        name = dom.name()
        if not dom.isPersistent():
            raise lv.LibvirtError(f"domain {name} is transient (no definition to change); define it first")
        new = domxml.prepare(config)
        if new is config:
            print(f"{name}: nothing to do (already prepared)")
            if live is not None and domxml.missing(live):
                print(f"{name} is running without it: the change takes effect at the next boot "
                      f"(virsh shutdown {name}; virsh start {name})")
            return 0
        if args.dry_run:
            print(domxml.xml_diff(config, new, name), end="")
            return 0
        try:
            c.defineXML(new)
        except libvirt.libvirtError as err:
            raise lv.LibvirtError(f"libvirt refused the prepared XML of {name}: {lv.one_line(err)}") from err
        print(f"{name}: prepared ({len(domxml.missing(config))} changes: memfd shared guest RAM, channel {domxml.CHANNEL_PORT})")
        if live is not None:
            print(f"{name} is running: the change takes effect at the next boot "
                  f"(virsh shutdown {name}; virsh start {name})")
        return 0
    finally:
        c.close()


def add_commands(sub) -> None:
    p = sub.add_parser("libvirt", help="prepare libvirt domains for heapballoon (check, prepare)")
    lsub = p.add_subparsers(dest="libvirt_cmd", metavar="{check,prepare}")
    for name, func, help_text in (("check", cmd_check, "say what a domain lacks to take part"),
                                  ("prepare", cmd_prepare, "add memfd shared RAM and the channel to a domain")):
        s = lsub.add_parser(name, help=help_text)
        s.add_argument("domain", metavar="DOMAIN")
        s.add_argument("-c", "--connect", metavar="URI",
                       help="libvirt URI (default $HEAPBALLOON_LIBVIRT_URI or qemu:///system)")
        if name == "prepare":
            s.add_argument("--dry-run", action="store_true", help="print the XML diff, change nothing")
        s.set_defaults(func=func)
