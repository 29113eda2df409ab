#!/bin/bash
# mpirun across the two namespaces of netns-up.sh: PPN ranks on each of n1 and n2, TCP between
# them over 10.201.0.0/24 only. usage: netns-mpirun.sh PROGRAM [ARGS...]  (PPN=2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PPN=${PPN:-2}
bash "$here/netns-up.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset OMPI_MCA_btl_tcp_if_include OMPI_MCA_oob_tcp_if_include
exec ip netns exec graft-n1 unshare --uts /bin/sh -c 'hostname n1; exec "$@"' sh \
  mpirun -H "n1:$PPN,n2:$PPN" -np $((2 * PPN)) --bind-to none --oversubscribe \
    --mca plm_rsh_agent "$here/netns-rsh" --mca oob_tcp_if_include 10.201.0.0/24 \
    --mca btl_tcp_if_include 10.201.0.0/24 --mca btl self,vader,tcp -x OMP_WAIT_POLICY=passive "$@"
