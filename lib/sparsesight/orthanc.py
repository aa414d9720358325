"""Start and stop a local Orthanc PACS (Debian packages `orthanc` + `orthanc-dicomweb`) for the tests and the demo.

Orthanc runs as a child process with a JSON configuration of its own: HTTP on 127.0.0.1 only (remote access
off), no DICOM listener, the DICOMweb plugin at /dicom-web/, storage in a folder the caller owns. Nothing here
uses or touches a system service. Install the programs with `apt-get install orthanc orthanc-dicomweb`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO

from .server import free_port, log_tail, stop_process_group, wait_until_answering

logger = logging.getLogger(__name__)

#: where Debian's packages put the program, the DICOMweb plugin and DCMTK's data dictionary
ORTHANC_EXE = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DICOM_DICTIONARIES = ("/usr/share/libdcmtk17/dicom.dic", "/usr/share/libdcmtk16/dicom.dic")


def installed() -> bool:
    """True when the Orthanc program and its DICOMweb plugin are on this machine."""
    return Path(ORTHANC_EXE).is_file() and Path(DICOMWEB_PLUGIN).is_file()


def dicom_dictionary() -> str:
    """DCMTK's dicom.dic (Orthanc needs DCMDICTPATH when it does not find its built-in dictionary)."""
    for path in DICOM_DICTIONARIES:
        if Path(path).is_file():
            return path
    found = sorted(Path("/usr/share").glob("libdcmtk*/dicom.dic"))
    if not found:
        raise FileNotFoundError("no DCMTK dicom.dic under /usr/share (apt-get install orthanc installs it)")
    return str(found[-1])


def config(storage: Path, port: int, lua_scripts: list[str] | None = None, users: dict | None = None) -> dict:
    """Orthanc's configuration: 127.0.0.1:port only, DICOMweb on, no DICOM port, storage under `storage`;
    HTTP basic authentication when ``users`` ({name: password}) is given."""
    return {
        "Name": "SparseSight-Orthanc",
        "StorageDirectory": str(storage / "db"),
        "IndexDirectory": str(storage / "db"),
        "TemporaryDirectory": str(storage / "tmp"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,  # Orthanc answers 127.0.0.1 only
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "HttpDescribeErrors": True,
        "DicomServerEnabled": False,  # no DICOM (C-STORE) listener: DICOMweb only
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "ConcurrentJobs": 1,
        "StableAge": 1,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        "LuaScripts": list(lua_scripts or []),
    }


class Orthanc:
    """`with Orthanc(folder) as url:` runs Orthanc for the block; `dicomweb` is the DICOMweb root URL."""

    def __init__(self, folder, port: int | None = None, lua_scripts: list[str] | None = None,
                 users: dict | None = None):
        self.folder = Path(folder)
        self.users = users
        self.port = port or free_port()
        self.lua_scripts = lua_scripts
        self.proc: subprocess.Popen | None = None
        self._log: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.folder / "orthanc.log"

    def start(self, timeout: float = 60.0) -> str:
        if not installed():
            raise FileNotFoundError(f"Orthanc is not installed ({ORTHANC_EXE}, {DICOMWEB_PLUGIN}): "
                                    f"apt-get install orthanc orthanc-dicomweb")
        for sub in ("db", "tmp"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        conf = self.folder / "orthanc.json"
        conf.write_text(json.dumps(config(self.folder, self.port, self.lua_scripts, self.users), indent=2))
        conf.chmod(0o600)  # it may hold passwords
        env = dict(os.environ, DCMDICTPATH=dicom_dictionary())
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([ORTHANC_EXE, str(conf)], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True, cwd=self.folder)
        auth = next(iter(self.users.items())) if self.users else None
        if not wait_until_answering(self.proc, f"{self.url}/system", timeout, "Orthanc", self.log, interval=0.2,
                                    auth=auth):
            self.stop()
            raise TimeoutError(f"Orthanc did not answer /system in {timeout:.0f} s; log:\n{self.log()}")
        logger.info("Orthanc on %s (storage %s)", self.url, self.folder)
        return self.url

    def log(self, tail: int = 6000) -> str:
        return log_tail(self.log_path, tail)

    def stop(self) -> None:
        """SIGTERM Orthanc's process group, SIGKILL after 15 s."""
        stop_process_group(self.proc, grace=15, reap=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def wipe(self) -> None:
        """Stop and remove the storage folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
