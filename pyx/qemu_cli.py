"""The bodies of ``kvmscope import qemu-log`` and ``kvmscope qemu`` (their
options are in :mod:`kvmscope.cli`, :func:`~kvmscope.cli.add_qemu_commands`).

Neither needs the compiled core; ``import`` needs no QEMU and no ``/dev/kvm``.
"""

import json
import os
import sys
import tempfile

from . import qemu, qemu_run
from .errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _progress(enabled):
    if not enabled:
        return None

    def show(done, total):
        pct = 100.0 * done / total if total else 0.0
        sys.stderr.write(f"\r  reading the log: {pct:5.1f}%")
        sys.stderr.flush()
    return show


def _print_summary(args, meta, extra=None):
    if args.quiet:
        return
    if args.format == "json":
        out = {"trace": args.output, "state": meta["state"], "tables": meta["tables"],
               "qemu": {k: meta["qemu"][k] for k in ("version", "bql", "bql_rule",
                                                     "aio_stages", "import")}}
        out.update(extra or {})
        print(json.dumps(out, indent=1))
        return
    lines = qemu.describe_import(meta)
    print(f"kvmscope: {args.output}: " + lines[0])
    for line in lines[1:] + list((extra or {}).get("messages", [])):
        print("  " + line)


def cmd_import(args):
    """``kvmscope import qemu-log LOG -o TRACE``: 0, or 2 for a log that is
    not a QEMU trace log or has no lock events."""
    source = {"version": args.qemu_version, "guest": args.guest}
    show = sys.stderr.isatty() and not args.quiet
    meta = qemu.import_log(args.log, args.output, force=args.force, bql=args.bql, source=source,
                           compression=None if args.compression == "none" else args.compression,
                           progress=_progress(show))
    if show:
        sys.stderr.write("\r" + " " * 40 + "\r")
    _print_summary(args, meta)
    return EXIT_OK


def cmd_qemu(args):
    """``kvmscope qemu -o TRACE -- QEMU ARGS...`` (or ``--guest NAME``): run
    QEMU traced and import its log.  0: QEMU ended well (exit status 0, the
    guest reported 0 through isa-debug-exit, or stopped by --duration); 1:
    QEMU or the guest failed (the trace is still written); 2: bad input or
    QEMU could not run; 130: interrupted."""
    if args.list_guests:
        return _list_guests(args)
    command = list(args.qemu_command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if not args.output:
        raise ConfigError("-o TRACE is required")
    events = qemu_run.parse_events(args.events)
    with tempfile.TemporaryDirectory(prefix="kvmscope-qemu-") as tmp:
        if args.guest:
            g = qemu_run.get_guest(args.guest)
            g.check()
            if args.vcpus > g.max_vcpus:
                raise ConfigError(f"--vcpus {args.vcpus}: the QEMU guest {g.name} uses at most "
                                  f"{g.max_vcpus}")
            binary = command[0] if command else qemu_run.DEFAULT_QEMU
            disks = qemu_run.make_disks(min(args.vcpus, g.disks), tmp) if g.disks else ()
            command = qemu_run.guest_command(
                g.name, args.vcpus, args.iterations, args.seed, args.port_burst, binary,
                args.cpu, disks) + command[1:]
        elif not command:
            raise ConfigError("no QEMU command: kvmscope qemu -o TRACE -- qemu-system-x86_64 ARGS... "
                              "(or --guest NAME)")
        else:
            given = [o for o, v, d in (("--vcpus", args.vcpus, 1), ("-n", args.iterations, None),
                                       ("--seed", args.seed, 1), ("--port-burst", args.port_burst, 8),
                                       ("--cpu", args.cpu, qemu_run.DEFAULT_CPU)) if v != d]
            if given:
                raise ConfigError(f"{given[0]} sets up a guest for QEMU: use it with --guest NAME "
                                  "(with a QEMU command of your own, put it in that command)")
        result = qemu_run.run(command, args.output, events=events, force=args.force, log=args.log,
                              duration=args.duration / 1e9 if args.duration else None,
                              guest=args.guest,
                              compression=None if args.compression == "none" else args.compression)
    ended = _ended(result)
    _print_summary(args, result.meta, {"messages": result.messages + [ended[1]],
                                       "qemu_exit_status": result.returncode,
                                       "guest_status": result.guest_status})
    if result.interrupted:
        return EXIT_INTERRUPTED
    return ended[0]


def _ended(result):
    """(exit status, line) saying how QEMU ended."""
    code = result.returncode
    if result.interrupted:
        return EXIT_INTERRUPTED, "QEMU interrupted (Ctrl-C)"
    if result.stopped:
        return EXIT_OK, "QEMU stopped at --duration"
    if result.guest_status is not None:
        ok = result.guest_status == 0
        return (EXIT_OK if ok else EXIT_FAILED), \
            f"guest reported status {result.guest_status} (isa-debug-exit)"
    if code == 0:
        return EXIT_OK, "QEMU exited with status 0"
    if code is not None and code < 0:
        return EXIT_FAILED, f"QEMU killed by signal {-code}"
    return EXIT_FAILED, f"QEMU exited with status {code}"


def _list_guests(args):
    if args.format == "json":
        print(json.dumps([{"name": g.name, "summary": g.summary, "kernel": g.path,
                           "default_iterations": g.default_iterations,
                           "max_vcpus": g.max_vcpus, "disks": g.disks,
                           "command": qemu_run.guest_command(
                               g.name, 1, disks=["DISK"] if g.disks else ())}
                          for g in qemu_run.GUESTS.values()], indent=1))
        return EXIT_OK
    width = max(len(n) for n in qemu_run.GUESTS)
    for g in qemu_run.GUESTS.values():
        print(f"{g.name:<{width}}  {g.summary}")
        print(f"{'':<{width}}  kernel: {g.path}" + ("" if os.path.isfile(g.path)
                                                    else " (missing: reinstall kvmscope)"))
    return EXIT_OK
