"""A real single-node SLURM cluster on localhost for the cluster tests (Debian's slurm-wlm 22.05,
munge, slurmdbd with MariaDB for `sacct`), started by hand as root without systemd.

Everything lives in one temporary folder; `SLURM_CONF` points the client commands (sbatch, sacct,
squeue, scancel: what Snakemake's SLURM executor calls) at it. A fake GPU gres (File=/dev/null)
lets `--gpus` jobs schedule; no CUDA work happens in them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import snakemake, snakemake_env

DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "slurmdbd", "munge", "mariadb-server")
ACCOUNT, PARTITION, CLUSTER = "doctrain", "debug", "doctrain"
SYSTEM_CONFIG = Path("/etc/slurm")


def available() -> str | None:
    """None when the cluster can run here, else why not."""
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    missing = [d for d in (*DAEMONS, "sacctmgr", "sbatch", "mariadb-install-db") if not shutil.which(d)]
    return (
        f"not installed: {', '.join(missing)} (apt-get install slurm-wlm slurmdbd munge mariadb-server)"
        if missing
        else None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"the test cluster did not come up: {what}")


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.etc, self.log = root / "etc", root / "log"
        self.processes: list[subprocess.Popen] = []
        self.links: list[Path] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.etc / "slurm.conf"))

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def _daemon(self, *cmd: str) -> None:
        log = open(self.log / f"{Path(cmd[0]).name}.out", "w")  # noqa: SIM115 (closed with the process)
        self.processes.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def start(self) -> Cluster:
        for sub in ("etc", "log", "spool/ctld", "spool/d", "db", "run", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        db_port = self._start_mariadb()
        self._write_configs(db_port)
        self._link_system_config()
        self._daemon("slurmdbd", "-D")  # reads slurmdbd.conf beside $SLURM_CONF
        _wait(lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0, "slurmdbd")
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT, "Cluster=" + CLUSTER)
        self.run("sacctmgr", "-i", "add", "user", "root", "Account=" + ACCOUNT)
        self._daemon("slurmctld", "-D", "-i", "-f", str(self.etc / "slurm.conf"))
        self._daemon("slurmd", "-D", "-f", str(self.etc / "slurm.conf"))
        _wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%t", check=False).stdout, "node idle")
        return self

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        # The default socket: the accounting client commands look nowhere else.
        self.socket = Path("/run/munge/munge.socket.2")
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            raise RuntimeError(
                f"{self.socket} exists: stop the munged that serves it (an earlier test cluster?)"
            )
        self._daemon(
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={self.socket}",
            f"--pid-file={self.root / 'run' / 'munged.pid'}",
            f"--log-file={self.log / 'munged.log'}",
            f"--seed-file={self.root / 'munge' / 'seed'}",
        )
        _wait(self.socket.exists, "munged")

    def _start_mariadb(self) -> int:
        data, port = self.root / "db", _free_port()
        subprocess.run(
            [
                "mariadb-install-db",
                "--user=root",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
            ],
            capture_output=True,
            check=True,
            timeout=120,
        )
        self.db_socket = self.root / "run" / "mysqld.sock"
        self._daemon(
            "mariadbd",
            "--user=root",
            f"--datadir={data}",
            f"--socket={self.db_socket}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.root / 'run' / 'mysqld.pid'}",
        )
        _wait(self.db_socket.exists, "mariadbd")
        return port

    def _write_configs(self, db_port: int) -> None:
        hardware = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        node = dict(f.split("=", 1) for f in hardware.split("\n")[0].split() if "=" in f)
        auth = "AuthType=auth/munge\n"
        ports = (_free_port(), _free_port(), _free_port())
        (self.etc / "slurmdbd.conf").write_text(
            f"{auth}DbdHost=localhost\nDbdPort={ports[2]}\nSlurmUser=root\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={db_port}\n"
            f"StorageUser=root\nStorageLoc=slurm_acct_db\nLogFile={self.log}/slurmdbd.log\n"
            f"PidFile={self.root}/run/slurmdbd.pid\n"
        )
        (self.etc / "slurmdbd.conf").chmod(0o600)
        (self.etc / "slurm.conf").write_text(
            f"ClusterName={CLUSTER}\nSlurmctldHost=localhost\nSlurmUser=root\n{auth}"
            f"SlurmctldPort={ports[0]}\nSlurmdPort={ports[1]}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n"
            "SelectTypeParameters=CR_Core_Memory\nGresTypes=gpu\nMpiDefault=none\nReturnToService=2\n"
            "MinJobAge=300\nSchedulerType=sched/backfill\nJobAcctGatherType=jobacct_gather/none\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={ports[2]}\nAccountingStorageTRES=gres/gpu\n"
            "AccountingStoreFlags=job_comment\n"
            f"StateSaveLocation={self.root}/spool/ctld\nSlurmdSpoolDir={self.root}/spool/d\n"
            f"SlurmctldPidFile={self.root}/run/slurmctld.pid\nSlurmdPidFile={self.root}/run/slurmd.pid\n"
            f"SlurmctldLogFile={self.log}/slurmctld.log\nSlurmdLogFile={self.log}/slurmd.log\n"
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={node['CPUs']} Boards={node.get('Boards', 1)} "
            f"SocketsPerBoard={node['SocketsPerBoard']} CoresPerSocket={node['CoresPerSocket']} "
            f"ThreadsPerCore={node['ThreadsPerCore']} RealMemory={node['RealMemory']} "
            "Gres=gpu:1 State=UNKNOWN\n"
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
        )
        (self.etc / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n")

    def _link_system_config(self) -> None:
        # Job steps inside a batch job (srun, as Snakemake's job-step executor runs them) are not
        # given $SLURM_CONF by slurmd and look in the default place: point it at this cluster.
        for name in ("slurm.conf", "gres.conf"):
            system = SYSTEM_CONFIG / name
            if system.is_symlink() and str(self.root) not in os.readlink(system):
                system.unlink()  # left behind by an earlier test cluster
            if system.exists():
                raise RuntimeError(f"{system} exists: this machine has a SLURM of its own, not touching it")
            system.parent.mkdir(parents=True, exist_ok=True)
            system.symlink_to(self.etc / name)
            self.links.append(system)

    def stop(self) -> None:
        for link in self.links:
            link.unlink(missing_ok=True)
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


# The profile as users run it, with status checks sped up for a cluster that answers at once.
ON_SLURM = (
    "--profile",
    "profiles/slurm",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--seconds-between-status-checks",
    "2",
)


def on_slurm(cluster: Cluster, workdir: Path, *args: str, timeout: int = 600, **env: str):
    """snakemake through profiles/slurm on the test cluster (`env`: more environment variables)."""
    return snakemake(
        workdir,
        *ON_SLURM,
        "--latency-wait",
        "5",
        *args,
        timeout=timeout,
        env=snakemake_env(SLURM_CONF=cluster.env["SLURM_CONF"], **env),
    )


def sacct(cluster: Cluster) -> list[dict]:
    out = cluster.run(
        "sacct", "-X", "-n", "-P", "--format=JobID,JobName,State,ReqTRES,Comment", "-S", "now-1hour"
    ).stdout
    return [
        dict(zip(("id", "name", "state", "tres", "comment"), line.split("|"), strict=True))
        for line in out.splitlines()
        if line
    ]
