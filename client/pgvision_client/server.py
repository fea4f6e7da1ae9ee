"""A throwaway PostgreSQL server in a folder of its own, for the demo and the benchmarks.

initdb into FOLDER/data, listen only on a unix socket in FOLDER, run as the postgres user
when started as root (PostgreSQL refuses to run as root), durability off. The folder is
replaced by the next run, so it must be one this module made (it holds MARKER).
"""

import os
import pathlib
import shlex
import shutil
import subprocess

import psycopg

from .db import UserError

MARKER = ".pgvision-demo"


class Server:
    """``with Server(folder, port) as s:`` connects with ``s.conninfo`` and stops the server
    on the way out; ``settings`` are set with ALTER SYSTEM after the start, so that a
    restart keeps them. ``leftovers``: names a folder without MARKER may hold and still be
    replaced."""

    def __init__(self, folder, port, settings=None, leftovers=()):
        self.folder = pathlib.Path(folder)
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = port
        self.settings = settings or {}
        self.leftovers = set(leftovers)
        pg_config = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise UserError(f"cannot run {pg_config} --bindir ({e}): install PostgreSQL or set PG_CONFIG") from None
        self.bindir = pathlib.Path(out.stdout.strip())
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.conninfo = f"host={self.folder} port={port} user=postgres dbname=postgres"

    def __enter__(self):
        self.prepare()
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _pg_ctl(self, *args):
        return subprocess.run(self.as_pg + [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
                              capture_output=True, stdin=subprocess.DEVNULL)

    def run(self, tool, *args):
        """Run one of the server's programs (as postgres when we are root); UserError if it fails."""
        cmd = self.as_pg + [str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise UserError(f"{tool} failed: {(done.stderr or done.stdout).strip()}")
        return done

    def prepare(self):
        """An empty folder of ours: refuse to wipe a folder this module did not make."""
        f = self.folder
        names = {p.name for p in f.iterdir()} if f.exists() else set()
        if names and MARKER not in names and not names <= self.leftovers:
            raise UserError(f"{f} is not empty and not a pgvision demo folder: choose another --dir")
        if (self.data / "postmaster.pid").exists() and self.running():
            raise UserError(f"a server is running in {self.data} (another demo?): stop it with"
                            f" pg_ctl -D {self.data} stop, or choose another --dir")
        if f.exists():
            shutil.rmtree(f)
        f.mkdir(parents=True, mode=0o755)
        (f / MARKER).write_text("a throwaway folder of pgvision_client.server, replaced by its next run\n")
        if self.as_pg:
            shutil.chown(f, "postgres", "postgres")
            probe = subprocess.run(self.as_pg + ["test", "-w", str(f)], stdin=subprocess.DEVNULL)
            if probe.returncode != 0:
                raise UserError(f"the postgres user cannot write to {f} (a parent folder is closed to"
                                " others?): choose a --dir postgres can reach, e.g. under /var/tmp")

    def start(self):
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -k {shlex.quote(str(self.folder))} -c listen_addresses=''"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        try:
            self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120", "-o", options, "start")
        except UserError as e:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-5:] if self.log.exists() else []
            raise UserError("\n".join([str(e), *tail])) from None
        if self.settings:
            with psycopg.connect(self.conninfo, autocommit=True) as c:
                for k, v in self.settings.items():
                    c.execute(f"ALTER SYSTEM SET {k} = '{v}'")
                c.execute("SELECT pg_reload_conf()")

    def running(self):
        return self._pg_ctl("status").returncode == 0

    def stop(self):
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("-m", "fast", "-w", "stop")
