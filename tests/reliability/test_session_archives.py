"""Issue 18, part A: PUT /session/?uncompress=true checks every archive member before anything is extracted."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from reliability_servers import leaked_paths, stray_tmp, strings

pytestmark = pytest.mark.server


def tar_bytes(members, mode="w:gz") -> bytes:
    """members: (name, kind, payload) with kind file | symlink | hardlink | fifo | dir."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                         "dir": tarfile.DIRTYPE, "chardev": tarfile.CHRTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            tf.addfile(info)
    return buf.getvalue()


def zip_bytes(members, mode: int = 0) -> bytes:
    """members: (name, payload); `mode` (e.g. stat.S_IFLNK | 0o777) is recorded for the last member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (name, payload) in enumerate(members):
            info = zipfile.ZipInfo(name)
            if mode and i == len(members) - 1:
                info.create_system, info.external_attr = 3, mode << 16  # unix attributes, as `zip -y` stores
            zf.writestr(info, payload)
    return buf.getvalue()


def put_session(srv, name, data, uncompress=True):
    return srv.put("/session/", params={"uncompress": str(uncompress).lower()}, files={"files": (name, data)})


@pytest.mark.parametrize("archive,member,reason", [
    ("dotdot.tar.gz", "../escaped.txt", "leaves the session folder"),
    ("deep.tar.gz", "a/../../escaped.txt", "leaves the session folder"),
    ("absolute.tar.gz", "/tmp/escaped-abs.txt", "absolute path"),
    ("symlink.tar.gz", "link", "symbolic or hard link"),
    ("hardlink.tar.gz", "hard", "symbolic or hard link"),
    ("fifo.tar.gz", "pipe", "device, fifo"),
    ("dotdot.zip", "../escaped.txt", "leaves the session folder"),
    ("symlink.zip", "zlink", "symbolic or hard link"),
])
def test_unsafe_archive_members_refused(server, archive, member, reason):
    if archive.endswith(".zip"):
        mode = stat.S_IFLNK | 0o777 if member == "zlink" else 0
        data = zip_bytes([("ok.txt", b"fine"), (member, b"/etc/passwd" if mode else b"evil")], mode)
    else:
        kind = {"link": "symlink", "hard": "hardlink", "pipe": "fifo"}.get(member, "file")
        payload = {"symlink": "/etc/passwd", "hardlink": "/etc/passwd", "fifo": None}.get(kind, b"evil")
        data = tar_bytes([("ok.txt", "file", b"fine"), (member, kind, payload)])
    work = server.tmpdir.parent  # the stock code extracts into a folder of the server's TMPDIR
    r = put_session(server, archive, data)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert repr(member) in detail and reason in detail, detail
    assert not leaked_paths(server, r.text)
    assert not list(work.rglob("escaped.txt")) and not list(work.rglob("ok.txt"))  # nothing extracted
    assert not Path("/tmp/escaped-abs.txt").exists()
    assert stray_tmp(server) == []


def test_oversized_archive_refused_by_its_headers(server):
    limit = server.info()["security"]["max_decompressed_bytes"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:  # declares limit + 1 bytes; the zeros compress to ~nothing
        info = tarfile.TarInfo("big.bin")
        info.size = limit + 1
        tf.addfile(info, _Zeros(limit + 1))
    r = put_session(server, "big.tar.gz", buf.getvalue())
    assert r.status_code == 400, r.text
    assert "'big.bin'" in r.json()["detail"] and "max_decompressed_bytes" in r.json()["detail"]
    assert stray_tmp(server) == []


class _Zeros(io.RawIOBase):
    def __init__(self, n):
        self.left = n

    def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self):
        return True


def test_not_an_archive_refused(server):
    r = put_session(server, "data.tar.gz", b"plain bytes")
    assert r.status_code == 400 and "not a readable tar archive" in r.json()["detail"], r.text
    r = put_session(server, "data.zip", b"plain bytes")
    assert r.status_code == 400 and "not a valid zip archive" in r.json()["detail"], r.text
    for name in ("image.nii.gz", "data.rar"):
        r = put_session(server, name, b"plain bytes")
        assert r.status_code == 400 and "archive by name" in r.json()["detail"], r.text
    assert stray_tmp(server) == []


def test_safe_archive_accepted(server):
    image = (server.studies / "case_001.nii.gz").read_bytes()
    r = put_session(server, "case.tar.gz", tar_bytes([("case", "dir", None), ("case/case_001.nii.gz", "file", image)]))
    assert not list(Path(server.tmpdir).glob("*/case/case_001.nii.gz"))
    assert r.status_code == 200, r.text
    session = r.json()["session_id"]
    info = server.get(f"/session/{session}")
    assert info.status_code == 200
    for answer in (r.json(), info.json()):
        assert not [s for s in strings(answer) if s.startswith("/")], answer  # relative to the sessions folder
    assert info.json()["image"].startswith(f"{session}/")
    gone = server.delete(f"/session/{session}")
    assert gone.status_code == 200 and not [s for s in strings(gone.json()) if s.startswith("/")]
    assert stray_tmp(server) == []
