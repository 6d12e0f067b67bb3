"""The download helper against a real HTTP server on 127.0.0.1 (no other network)."""

import functools
import hashlib
import http.server
import threading

import pytest

from llmscratch.download import DownloadError, download

PAYLOAD = "Tiny Shakespeare stand-in: 朕 and ünïcode.\n".encode() * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.txt").write_bytes(PAYLOAD)
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests += 1
        super().do_GET()

    def log_message(self, *args):
        pass


def test_downloads_checks_and_caches(server, tmp_path):
    httpd, url, _ = server
    cache = tmp_path / "cache"
    path = download(f"{url}/data.txt", SHA, cache=cache)
    assert path == cache / "data.txt" and path.read_bytes() == PAYLOAD
    assert download(f"{url}/data.txt", SHA.upper(), cache=cache) == path
    assert httpd.requests == 1  # the second call was served from the cache
    assert list(cache.iterdir()) == [path]  # no temporary files left behind


def test_cache_folder_from_environment(server, tmp_path, monkeypatch):
    _, url, _ = server
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "envcache"))
    assert download(f"{url}/data.txt", SHA, filename="renamed.txt") == tmp_path / "envcache" / "renamed.txt"


def test_bad_checksum_is_an_error_and_caches_nothing(server, tmp_path):
    _, url, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=f"checksum mismatch.*expected sha256 {'0' * 64}, got {SHA}"):
        download(f"{url}/data.txt", "0" * 64, cache=cache)
    assert list(cache.iterdir()) == []


def test_corrupt_cache_entry_is_fetched_again(server, tmp_path):
    httpd, url, _ = server
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.txt").write_bytes(b"truncated")
    assert download(f"{url}/data.txt", SHA, cache=cache).read_bytes() == PAYLOAD
    assert httpd.requests == 1


def test_missing_file_and_offline_are_clear_errors(server, tmp_path):
    _, url, _ = server
    with pytest.raises(DownloadError, match="could not download .*missing.txt.*HTTP Error 404"):
        download(f"{url}/missing.txt", SHA, cache=tmp_path / "cache")
    # A port nobody listens on stands for "offline": the connection is refused.
    closed = http.server.HTTPServer(("127.0.0.1", 0), QuietHandler)
    port = closed.server_address[1]
    closed.server_close()
    with pytest.raises(DownloadError, match="are you offline.*copy the file by hand to"):
        download(f"http://127.0.0.1:{port}/data.txt", SHA, cache=tmp_path / "cache", timeout=5)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.fixture
def sentinel(tmp_path):
    """A file just outside the cache folder that no download may read, replace or delete."""
    path = tmp_path / "outside.txt"
    path.write_bytes(b"not the cache's")
    (tmp_path / "cache" / "sub").mkdir(parents=True)  # so that "sub/../../outside.txt" resolves
    return path


@pytest.mark.parametrize("filename", ["../outside.txt", "sub/../../outside.txt", "ABSOLUTE", ".", ".."])
def test_a_filename_outside_the_cache_is_refused(server, tmp_path, sentinel, filename):
    httpd, url, _ = server
    filename = str(sentinel) if filename == "ABSOLUTE" else filename
    with pytest.raises(ValueError, match=f"filename {filename!r} is not a plain file name.*filename='data.txt'"):
        download(f"{url}/data.txt", SHA, filename=filename, cache=tmp_path / "cache")
    assert sentinel.read_bytes() == b"not the cache's"
    assert httpd.requests == 0 and list((tmp_path / "cache").iterdir()) == [tmp_path / "cache" / "sub"]


@pytest.mark.parametrize("path", ["/..", "/data.txt/..", "/.", "/", ""])
def test_a_url_without_a_file_name_needs_a_filename(server, tmp_path, sentinel, path):
    httpd, url, _ = server
    with pytest.raises(ValueError, match=f"the URL {url}{path} does not end in a file name.*filename="):
        download(f"{url}{path}", SHA, cache=tmp_path / "cache")
    assert sentinel.read_bytes() == b"not the cache's"
    assert httpd.requests == 0 and list((tmp_path / "cache").iterdir()) == [tmp_path / "cache" / "sub"]
