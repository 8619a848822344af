"""A real, throw-away PostgreSQL + PostGIS server for the tests and the benchmark.

``PgServer.start()`` runs initdb into a fresh temporary folder and starts the server on a
free local port (unix socket in that folder, trust auth for local connections only). As
root it runs the server as the OS user ``postgres`` (initdb refuses root). A template
database holds the postgis extension, so ``new_database()`` is a quick copy of it.
``PgServer.find_bin()`` returns None when PostgreSQL or PostGIS is not installed
(``tools/system-deps.sh`` installs them; tests then skip with that reason).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TEMPLATE = "patrol_template"
RUN_AS = "postgres"


class PgServer:
    def __init__(self, bin_dir: Path, base: Path, port: int):
        self.bin_dir, self.base, self.port = bin_dir, base, port
        self.data = base / "data"
        self.n = 0

    # ------------------------------------------------------------ discovery
    @staticmethod
    def find_bin() -> tuple[Path | None, str]:
        """(bin folder, '') when postgres and the postgis extension exist, else (None, why)."""
        for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True) + \
                [os.path.dirname(shutil.which("pg_ctl") or "")]:
            if not d or not os.path.exists(os.path.join(d, "initdb")):
                continue
            ver = Path(d).parent.name
            if glob.glob(f"/usr/share/postgresql/{ver}/extension/postgis.control") or \
                    glob.glob(os.path.join(Path(d).parent, "share*", "extension", "postgis.control")):
                return Path(d), ""
            return None, f"PostgreSQL in {d} has no PostGIS extension (run tools/system-deps.sh)"
        return None, "PostgreSQL server binaries not found (run tools/system-deps.sh as root)"

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, max_connections: int = 200, extra: dict[str, str] | None = None) -> "PgServer":
        bin_dir, why = cls.find_bin()
        if bin_dir is None:
            raise RuntimeError(why)
        base = Path(tempfile.mkdtemp(prefix="patrol-pg-"))
        server = cls(bin_dir, base, _free_port())
        as_root = os.geteuid() == 0
        if as_root:
            try:
                pw = pwd.getpwnam(RUN_AS)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", RUN_AS], check=True)
                pw = pwd.getpwnam(RUN_AS)
            os.chown(base, pw.pw_uid, pw.pw_gid)
            os.chmod(base, 0o700)
        server._run("initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust",
                    "--encoding=UTF8", "--locale=C.UTF-8", "-N")
        conf = {"listen_addresses": "'127.0.0.1'", "port": str(server.port),
                "unix_socket_directories": f"'{base}'", "max_connections": str(max_connections),
                "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                "shared_buffers": "128MB", "logging_collector": "off", **(extra or {})}
        with open(server.data / "postgresql.auto.conf", "a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        server._run("pg_ctl", "-D", str(server.data), "-l", str(base / "server.log"),
                    "-w", "-t", "60", "start")
        server.sql("postgres", f"CREATE DATABASE {TEMPLATE}")
        server.sql(TEMPLATE, "CREATE EXTENSION postgis")
        return server

    def restart(self) -> None:
        """Kill the server (as a crash or a reboot would) and start it again on the same port."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------ use
    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh database with postgis (a copy of the template); returns its URL."""
        self.n += 1
        name = f"{prefix}_{os.getpid()}_{self.n}"
        self.sql("postgres", f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)

    def sql(self, db: str, query: str, params=None) -> list[tuple]:
        import psycopg
        with psycopg.connect(self.url(db), autocommit=True) as con:
            cur = con.execute(query, params)
            return cur.fetchall() if cur.description else []

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.base)
        if proc.returncode:
            log = self.base / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()} {tail}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":            # a quick manual check: start, create a db, stop
    t = time.perf_counter()
    srv = PgServer.start()
    print("started in", round(time.perf_counter() - t, 2), "s at", srv.url())
    t = time.perf_counter()
    for _ in range(3):
        u = srv.new_database()
    print("3 databases in", round(time.perf_counter() - t, 2), "s; last", u)
    print(srv.sql(u.rsplit("/", 1)[1], "SELECT postgis_full_version()")[0][0][:80])
    print(srv.sql(u.rsplit("/", 1)[1], "SELECT srid, proj4text FROM spatial_ref_sys WHERE srid = 4547"))
    srv.stop()
