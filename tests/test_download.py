import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from functools import partial

import pytest

from lstmcli.data.download import RemoteFile, extract_once, fetch
from lstmcli.errors import DatasetError

from .conftest import write_sums


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.endswith(".part")]


def test_fetch_from_mirror_folder_checks_its_sha256sums(mirror, tmp_path):
    cache = tmp_path / "cache"
    remote = RemoteFile("ag_news", "ag_news_csv/test.csv", "https://example.invalid/test.csv", "0" * 32)
    path = fetch(remote, cache)  # the wrong md5 is not used: the mirror has SHA256SUMS
    assert path == cache / "ag_news_csv" / "test.csv"
    assert path.read_bytes() == (mirror / "ag_news_csv" / "test.csv").read_bytes()
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_mirror_without_sums_uses_upstream_md5(mirror, tmp_path):
    (mirror / "SHA256SUMS").unlink()
    target = mirror / "ag_news_csv" / "test.csv"
    ok = RemoteFile("ag_news", "ag_news_csv/test.csv", "https://example.invalid/t.csv", md5(target))
    assert fetch(ok, tmp_path / "a").is_file()
    bad = RemoteFile("ag_news", "ag_news_csv/test.csv", "https://example.invalid/t.csv", "f" * 32)
    with pytest.raises(DatasetError, match="checksum mismatch"):
        fetch(bad, tmp_path / "b")


def test_checksum_mismatch_leaves_nothing(mirror, tmp_path):
    (mirror / "aclImdb_v1.tar.gz").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    remote = RemoteFile("imdb", "aclImdb_v1.tar.gz", "http://example.invalid/a.tgz", "0" * 32)
    with pytest.raises(DatasetError, match=r"dataset 'imdb': checksum mismatch .*sha256"):
        fetch(remote, cache)
    assert not (cache / "aclImdb_v1.tar.gz").exists()
    assert leftovers(cache) == []


def test_offline_error_names_dataset_url_and_variable(workdir, tmp_path):
    remote = RemoteFile("imdb", "aclImdb_v1.tar.gz", "http://127.0.0.1:9/aclImdb_v1.tar.gz", "0" * 32)
    with pytest.raises(DatasetError) as err:
        fetch(remote, tmp_path / "cache")
    msg = str(err.value)
    for fragment in ("dataset 'imdb'", "http://127.0.0.1:9/aclImdb_v1.tar.gz", "LSTMCLI_MIRROR"):
        assert fragment in msg
    assert leftovers(tmp_path / "cache") == []


def test_missing_file_in_mirror(mirror, tmp_path):
    (mirror / "ag_news_csv" / "train.csv").unlink()
    remote = RemoteFile("ag_news", "ag_news_csv/train.csv", "https://up.example/train.csv", "0" * 32)
    with pytest.raises(DatasetError, match=r"cannot fetch ag_news_csv/train.csv from mirror LSTMCLI_MIRROR=.*https://up.example/train.csv"):
        fetch(remote, tmp_path / "cache")


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits: dict = {}

    def do_GET(self):
        CountingHandler.hits[self.path] = CountingHandler.hits.get(self.path, 0) + 1
        if self.path.endswith(".tar.gz"):
            time.sleep(0.5)  # keep the first download in flight while the second process starts
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(mirror):
    CountingHandler.hits = {}
    handler = partial(CountingHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_two_processes_fetch_once_over_http(http_mirror, tmp_path):
    cache = tmp_path / "cache"
    code = ("import sys; from pathlib import Path; from lstmcli.data.download import extract_once, fetch; "
            "from lstmcli.data.registry import IMDB; "
            "p = fetch(IMDB.files['archive'], Path(sys.argv[1])); "
            "print(extract_once(p, Path(sys.argv[1]), 'aclImdb'))")
    env = {**os.environ, "LSTMCLI_MIRROR": http_mirror}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cache)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert CountingHandler.hits.get("/aclImdb_v1.tar.gz") == 1
    assert (cache / "aclImdb" / "train" / "pos").is_dir()
    assert leftovers(cache) == []


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extraction_refuses_members_outside_the_cache(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    _tar(archive, [("aclImdb/train/pos/1_9.txt", b"ok"), ("../../escaped.txt", b"owned")])
    cache = tmp_path / "deep" / "cache"
    cache.mkdir(parents=True)
    with pytest.raises(DatasetError, match="cannot extract"):
        extract_once(archive, cache, "aclImdb")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (cache / "aclImdb").exists() and leftovers(cache) == []


def test_extraction_happens_once(tmp_path):
    archive = tmp_path / "a.tar.gz"
    _tar(archive, [("aclImdb/x.txt", b"1")])
    first = extract_once(archive, tmp_path, "aclImdb")
    archive.write_bytes(b"not a tar any more")  # a second call must not even open it
    assert extract_once(archive, tmp_path, "aclImdb") == first


def test_corrupt_archive_is_a_clear_error(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match="cannot extract"):
        extract_once(archive, tmp_path, "aclImdb")


def test_sums_helper_matches_format(mirror):
    write_sums(mirror, ["aclImdb_v1.tar.gz"])
    assert (mirror / "SHA256SUMS").read_text().endswith("  aclImdb_v1.tar.gz\n")
