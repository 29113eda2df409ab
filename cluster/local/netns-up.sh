#!/bin/bash
# Two "hosts" for multi-node MPI tests on one machine: network namespaces graft-n1 and graft-n2
# joined by a veth pair, addresses 10.201.0.1/24 and 10.201.0.2/24. Idempotent; needs root and
# iproute2. Only these namespaces' own addresses are used.
set -euo pipefail
exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
for i in 1 2; do exists graft-n$i || ip netns add graft-n$i; ip -n graft-n$i link set lo up; done
if ! ip -n graft-n1 link show graft-v1 >/dev/null 2>&1; then
  ip link add graft-v1 netns graft-n1 type veth peer name graft-v2 netns graft-n2
  ip -n graft-n1 addr add 10.201.0.1/24 dev graft-v1
  ip -n graft-n2 addr add 10.201.0.2/24 dev graft-v2
fi
ip -n graft-n1 link set graft-v1 up
ip -n graft-n2 link set graft-v2 up
