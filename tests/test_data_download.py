"""download_bananas against a local HTTP server: sha1, resume, errors, no second download.

Never touches the internet: every URL points at 127.0.0.1.
"""

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fixtures import write_tiny_bananas

from tinyssd.data import DataError, read_bananas
from tinyssd.data.download import download_bananas


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A zip laid out as the chapter's: banana-detection/bananas_{train,val}/..."""
    src = write_tiny_bananas(tmp_path_factory.mktemp("src"), n_train=6, n_val=2, size=32)
    path = tmp_path_factory.mktemp("zip") / "banana-detection.zip"
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(src.rglob("*")):
            z.write(f, f"banana-detection/{f.relative_to(src)}")
    return path.read_bytes()


class Server:
    """Serves one body at any path; records each request's Range header."""

    def __init__(
        self, body: bytes, honour_range: bool = True, status: int = 200, cut_at: int | None = None
    ):
        self.body, self.honour_range, self.status = body, honour_range, status
        self.cut_at = cut_at  # stop sending after this many bytes, then close
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                if server.status != 200:
                    self.send_error(server.status)
                    return
                start = 0
                if wanted and server.honour_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(server.body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    end = len(server.body) - 1
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(server.body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(server.body) - start))
                self.end_headers()
                self.wfile.write(server.body[start : server.cut_at])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/banana-detection.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(body, **kw):
        servers.append(Server(body, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def test_downloads_verifies_and_extracts_the_chapter_layout(archive, serve, tmp_path):
    server = serve(archive)
    data = download_bananas(tmp_path, url=server.url, sha1=sha1(archive))
    assert data == tmp_path / "banana-detection"
    assert len(read_bananas(data, "train").records) == 6
    assert len(read_bananas(data, "val").records) == 2
    assert (tmp_path / "banana-detection.zip").read_bytes() == archive
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "banana-detection",
        "banana-detection.zip",
    ]
    assert server.ranges == [None]


def test_a_second_call_with_the_data_present_makes_no_request(archive, serve, tmp_path):
    server = serve(archive)
    first = download_bananas(tmp_path, url=server.url, sha1=sha1(archive))
    assert download_bananas(tmp_path, url=server.url, sha1=sha1(archive)) == first
    assert len(server.ranges) == 1


def test_a_deleted_data_folder_is_extracted_again_from_the_kept_zip(archive, serve, tmp_path):
    server = serve(archive)
    data = download_bananas(tmp_path, url=server.url, sha1=sha1(archive))
    (data / "bananas_val" / "label.csv").unlink()
    assert download_bananas(tmp_path, url=server.url, sha1=sha1(archive)) == data
    assert len(read_bananas(data, "val").records) == 2
    assert len(server.ranges) == 1


def test_a_wrong_sha1_is_an_error_and_leaves_no_file(archive, serve, tmp_path):
    server = serve(archive)
    with pytest.raises(DataError, match="sha1 .* does not match .*removed") as e:
        download_bananas(tmp_path, url=server.url, sha1="0" * 40)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_partial_download_is_resumed_with_a_range_request(archive, serve, tmp_path):
    server = serve(archive)
    (tmp_path / "banana-detection.zip.part").write_bytes(archive[:1000])
    data = download_bananas(tmp_path, url=server.url, sha1=sha1(archive))
    assert server.ranges == ["bytes=1000-"]
    assert (tmp_path / "banana-detection.zip").read_bytes() == archive
    assert not (tmp_path / "banana-detection.zip.part").exists()
    assert len(read_bananas(data, "train").records) == 6


def test_an_interrupted_download_is_an_error_and_the_next_call_resumes(archive, serve, tmp_path):
    cut = serve(archive, cut_at=1500)
    with pytest.raises(DataError, match="interrupted.*run again to resume") as e:
        download_bananas(tmp_path, url=cut.url, sha1=sha1(archive))
    assert "\n" not in str(e.value)
    assert (tmp_path / "banana-detection.zip.part").stat().st_size == 1500
    whole = serve(archive)
    download_bananas(tmp_path, url=whole.url, sha1=sha1(archive))
    assert whole.ranges == ["bytes=1500-"]
    assert (tmp_path / "banana-detection.zip").read_bytes() == archive


def test_a_whole_part_file_is_used_when_nothing_is_left_to_fetch(archive, serve, tmp_path):
    server = serve(archive)
    (tmp_path / "banana-detection.zip.part").write_bytes(archive)
    download_bananas(tmp_path, url=server.url, sha1=sha1(archive))
    assert server.ranges == [f"bytes={len(archive)}-"]  # answered 416
    assert (tmp_path / "banana-detection.zip").read_bytes() == archive


def test_a_server_ignoring_range_makes_the_download_start_over(archive, serve, tmp_path):
    server = serve(archive, honour_range=False)
    (tmp_path / "banana-detection.zip.part").write_bytes(b"garbage that is not the zip")
    download_bananas(tmp_path, url=server.url, sha1=sha1(archive))
    assert server.ranges == ["bytes=27-"]
    assert (tmp_path / "banana-detection.zip").read_bytes() == archive


def test_an_unreachable_server_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="cannot connect") as e:
        download_bananas(tmp_path, url="http://127.0.0.1:1/banana-detection.zip", sha1="0" * 40)
    assert "\n" not in str(e.value) and "127.0.0.1:1" in str(e.value)
    assert not list(tmp_path.glob("*.zip"))


def test_an_http_error_names_the_status(serve, tmp_path):
    server = serve(b"", status=404)
    with pytest.raises(DataError, match="HTTP error 404") as e:
        download_bananas(tmp_path, url=server.url, sha1="0" * 40)
    assert "\n" not in str(e.value)


def test_a_zip_without_the_banana_layout_is_an_error(serve, tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not bananas")
    body = path.read_bytes()
    server = serve(body)
    with pytest.raises(DataError, match="no bananas_train"):
        download_bananas(tmp_path / "to", url=server.url, sha1=sha1(body))
    assert not (tmp_path / "to" / "banana-detection").exists()


def test_a_zip_member_that_climbs_out_is_kept_inside(archive, serve, tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as z:
        with zipfile.ZipFile(io.BytesIO(archive)) as chapter:
            for info in chapter.infolist():
                z.writestr(info, chapter.read(info))
        z.writestr("../../escaped.txt", "outside")
    body = path.read_bytes()
    server = serve(body)
    data = download_bananas(tmp_path / "to", url=server.url, sha1=sha1(body))
    assert len(read_bananas(data, "train").records) == 6
    # the member lands in the temporary extraction folder, which is removed
    assert list(tmp_path.rglob("escaped.txt")) == []
    assert not (tmp_path.parent / "escaped.txt").exists()
