#!/usr/bin/env bash
# Re-record the sample traces shipped in traces/ (needs /dev/kvm and an installed kvmscope).
set -euo pipefail
cd "$(dirname "$0")"
run() { out=$1; shift; rm -rf "$out"; kvmscope run "$@" --compression zstd --quiet-console -q -o "$out"; }
run pio-storm-2vcpu        pio-storm --vcpus 2 -n 50000
run mixed-2vcpu            mixed --vcpus 2 -n 400
run disk-io-user-irqchip   disk-io --vcpus 1 -n 300 --irqchip user
run timer-hlt-2vcpu        timer-hlt --vcpus 2 -n 200
for i in 1 2 3; do
    run regress/base-$i    pio-storm --vcpus 2 -n 10000 --seed $i
    run regress/hold2us-$i pio-storm --vcpus 2 -n 10000 --seed $i --inject-hold pio:debugport=2us
done
du -sh ./*/ regress/*/
