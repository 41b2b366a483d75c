#!/usr/bin/env bash
# Re-record the QEMU logs shipped in traces/ and import them into the traces
# shipped beside them (needs qemu-system-x86_64, /dev/kvm and an installed
# kvmscope; docs/qemu.md).  `qemu-record.sh --import` only imports the shipped
# logs again (no QEMU needed), with the QEMU version and guest their traces name.
set -euo pipefail
cd "$(dirname "$0")"
qemu=${QEMU:-qemu-system-x86_64}
logs="qemu-pio-storm-2vcpu qemu-mixed-2vcpu qemu-attach-pio-storm"

import_all() {
    for name in $logs; do
        meta() { python3 -c "import json, sys; m = json.load(open(sys.argv[1])); print($1)" "$name/meta.json"; }
        version=$(meta 'm["qemu"]["version"]')
        guest=$(meta 'm["config"]["guest"]')
        kvmscope import qemu-log "$name.log.gz" -o "$name" --force --compression zstd \
            --guest "$guest" --qemu-version "$version" -q
    done
    du -sh qemu-*
}
if [ "${1:-}" = "--import" ]; then
    import_all
    exit 0
fi

# QEMU started by kvmscope: `kvmscope qemu` adds the trace options, keeps the
# log (--log), imports it; the log is shipped gzip-compressed.
record() {
    name=$1; shift
    rm -f "$name.log" "$name.log.gz"
    kvmscope qemu -o "$name" --force --compression zstd --log "$name.log" -q "$@" -- "$qemu"
    gzip -9 -n "$name.log"
}
record qemu-pio-storm-2vcpu --guest pio-storm --vcpus 2 -n 10000
record qemu-mixed-2vcpu     --guest mixed --vcpus 2 -n 200

# A QEMU kvmscope did not start: tracing switched on and off through the
# human monitor (as on a production QEMU, which libvirt starts with
# -msg timestamp=on) for about 0.3 s of a running pio-storm guest.
name=qemu-attach-pio-storm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -f "$name.log" "$name.log.gz"
kernel=$(python3 -c 'from kvmscope import qemu_run; print(qemu_run.GUESTS["pio-storm"].check())')
"$qemu" -accel kvm -cpu host,-arch-capabilities -m 64M -nodefaults -display none -no-reboot \
    -bios /usr/share/qemu/qboot.rom -device isa-debug-exit -msg timestamp=on \
    -monitor "unix:$tmp/monitor,server,nowait" -kernel "$kernel" -append n=100000000 &
pid=$!
python3 - "$tmp/monitor" "$PWD/$name.log" <<'EOF'
import socket, sys, time
for _ in range(100):                    # until QEMU listens
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.05)
def hmp(command):
    s.sendall(command.encode() + b"\n")
    time.sleep(0.05)
time.sleep(0.5)                         # the guest is running
hmp(f"logfile {sys.argv[2]}")
hmp("trace-event qemu_mutex_* on")
hmp("trace-event kvm_run_exit on")
time.sleep(0.3)
hmp("trace-event kvm_run_exit off")
hmp("trace-event qemu_mutex_* off")
hmp("quit")
EOF
wait "$pid" || true
kvmscope import qemu-log "$name.log" -o "$name" --force --guest pio-storm \
    --qemu-version "$("$qemu" --version | head -n 1)" -q
gzip -9 -n "$name.log"
# every shipped trace is the import of its shipped log (the test suite checks it)
import_all
