"""A one-node SLURM cluster for the launch tests, started from a temporary directory: munged with
its own key and socket, slurmctld and slurmd with a `slurm.conf` naming this host (Debian's
slurm-wlm and munge; `.ci/run` installs them). `srun` and `sinfo` reach it through `SLURM_CONF`.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd", "srun")


def missing_programs() -> list[str]:
    return [p for p in DAEMONS if shutil.which(p) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(root: str) -> str:
    host = socket.gethostname()
    return "\n".join(
        [
            "ClusterName=xmodal-test",
            f"SlurmctldHost={host}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            # cred_expire: how long a requeued job waits to start again (default 120 s; it is also
            # how long a step credential lives, so not shorter on a loaded machine)
            f"AuthInfo=socket={root}/munge.sock,cred_expire=10",
            "CredType=cred/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid",
            f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/slurmctld.log",
            f"SlurmdLogFile={root}/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            # Then started by the next scheduling pass: every second, not 60 (30 for backfill)
            "SchedulerParameters=sched_interval=1,bf_interval=1",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "KillWait=60",
            # JAX's SLURM detection takes the coordinator port from the job id: clusters of
            # other test workers on this host must not number their jobs alike.
            f"FirstJobId={random.randrange(1_000, 1_000_000)}",
            f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
            "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
            "",
        ]
    )


class SlurmCluster:
    """Start with `start()`, stop with `stop()`; `env` is what a command needs to reach it."""

    def __init__(self, root: str):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.env = {**os.environ, "SLURM_CONF": self.conf}

    def start(self, timeout_s: float = 60.0) -> None:
        r = self.root
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(r, sub), exist_ok=True)
        key = os.path.join(r, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={key}",
                f"--socket={r}/munge.sock",
                f"--log-file={r}/munged.log",
                f"--pid-file={r}/munged.pid",
                f"--seed-file={r}/munged.seed",
            ],
            check=True,
        )
        with open(self.conf, "w") as f:
            f.write(_conf(r))
        subprocess.run(["slurmctld", "-f", self.conf], check=True, env=self.env)
        subprocess.run(["slurmd", "-f", self.conf], check=True, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True
            ).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the test SLURM cluster in {r} did not become idle: {state!r}")

    def stop(self) -> None:
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            try:
                with open(os.path.join(self.root, f"{name}.pid")) as f:
                    os.kill(int(f.read().strip()), 15)
            except (OSError, ValueError):
                pass
