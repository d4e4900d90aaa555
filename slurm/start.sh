#!/usr/bin/env bash
# Start a real single-node Slurm cluster on localhost (slurmctld, slurmd, slurmdbd with MariaDB
# accounting, munge), as root, without systemd or cgroups. Installs the Debian packages if missing.
#
#   eval "$(bash slurm/start.sh)"      # prints `export SLURM_CONF=...`; state under $TAYLORLAB_SLURM_DIR
#   bash slurm/stop.sh                 # stops every daemon it started (by PID)
#
# The node advertises 2 GPUs through character-device stand-ins (mknod of /dev/null's numbers) so
# that GPU resource requests can be scheduled and tested on a CPU machine: they are NOT GPUs.
set -euo pipefail
D=${TAYLORLAB_SLURM_DIR:-/tmp/taylorlab-slurm}
HERE=$(cd "$(dirname "$0")" && pwd)
log() { echo "[slurm/start] $*" >&2; }

bash "$HERE/ensure-packages.sh" >&2
mkdir -p "$D"/{etc,log,spool,state,run,dev,mysql}
# the cores this shell may use; nproc alone honours OMP_NUM_THREADS (which the test run lowers per
# worker), and a node of fewer CPUs than the machine refuses multi-task jobs
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))

# ---- munge (authentication)
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chmod 600 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1 </dev/null; then
  munged --force --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log"
fi

# ---- MariaDB for slurmdbd, on 127.0.0.1 with its own data, log and pid
if [ ! -d "$D/mysql/mysql" ]; then
  mariadb-install-db --datadir="$D/mysql" --user=root --auth-root-authentication-method=normal >"$D/log/mariadb-install.log" 2>&1
fi
if ! [ -S "$D/run/mysql.sock" ] || ! mariadb --socket="$D/run/mysql.sock" -uroot -e 'select 1' >/dev/null 2>&1; then
  setsid mariadbd --datadir="$D/mysql" --socket="$D/run/mysql.sock" --port=3307 --bind-address=127.0.0.1 \
    --pid-file="$D/run/mariadb.pid" --log-error="$D/log/mariadb.log" --user=root --skip-name-resolve \
    </dev/null >/dev/null 2>&1 &
  for _ in $(seq 1 100); do
    mariadb --socket="$D/run/mysql.sock" -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2
  done
fi
mariadb --socket="$D/run/mysql.sock" -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
  CREATE DATABASE IF NOT EXISTS slurm_acct_db; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

# ---- configuration
[ -e "$D/dev/fakegpu0" ] || mknod "$D/dev/fakegpu0" c 1 3
[ -e "$D/dev/fakegpu1" ] || mknod "$D/dev/fakegpu1" c 1 3
cat >"$D/etc/slurm.conf" <<CONF
ClusterName=taylorlab
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
EnforcePartLimits=ALL
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
KillWait=5
MinJobAge=300
InactiveLimit=0
JobRequeue=1
GresTypes=gpu
NodeName=localhost CPUs=$CPUS RealMemory=$MEM Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
cat >"$D/etc/gres.conf" <<CONF
NodeName=localhost Name=gpu File=$D/dev/fakegpu[0-1]
CONF
cat >"$D/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
chmod 600 "$D/etc/slurmdbd.conf"
export SLURM_CONF="$D/etc/slurm.conf"

alive() { [ -f "$1" ] && s=$(awk '{print $3}' "/proc/$(cat "$1")/stat" 2>/dev/null) && [ -n "$s" ] && [ "$s" != Z ]; }

alive "$D/run/slurmdbd.pid" || slurmdbd
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.1; done
sacctmgr -i add cluster taylorlab >/dev/null 2>&1 || true
alive "$D/run/slurmctld.pid" || slurmctld
alive "$D/run/slurmd.pid" || slurmd -N localhost
for _ in $(seq 1 150); do
  state=$(sinfo -h -N -o '%t' 2>/dev/null | head -1)
  case "$state" in idle|mix|alloc) break ;; esac
  sleep 0.2
done
case "${state:-}" in idle|mix|alloc) ;; *) log "the node did not come up (state '${state:-none}'); see $D/log"; exit 1 ;; esac
log "cluster up: node localhost ($CPUS CPUs, 2 stand-in GPUs), state $state; logs in $D/log"
echo "export SLURM_CONF=$SLURM_CONF"
