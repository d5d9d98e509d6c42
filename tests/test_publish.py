"""`filtag-kg publish` against a stub Graph Store on loopback that misbehaves on purpose."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from filtag_kg.publish import PublishError, publish, state_path

BASE = "https://example.org/kg/"


class StubStore:
    """A Graph Store Protocol stub on loopback: keeps what each ``PUT ?graph=`` sent
    (``requests`` lists the graphs of all PUTs, and ``"METHOD path"`` of any other request,
    which fails with 500), and answers a graph's first requests with the failures listed
    for it in ``faults``:
    ``"incomplete"`` (a body shorter than announced), ``"badstatus"`` (no HTTP status
    line), ``"disconnect"`` (connection closed before an answer), ``"500"``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.graphs: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.faults: dict[str, list[str]] = {}
        self.active = self.max_active = 0
        lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:  # noqa: N802 - the standard library's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                graph = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("graph", ["?"])[0]
                with lock:
                    stub.requests.append(graph)
                    stub.active += 1
                    stub.max_active = max(stub.max_active, stub.active)
                    fault = stub.faults.get(graph, []).pop(0) if stub.faults.get(graph) else None
                try:
                    time.sleep(delay_s)
                    if fault == "incomplete":
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                        self.close_connection = True
                    elif fault == "badstatus":
                        self.wfile.write(b"garbage\r\n\r\n")
                        self.close_connection = True
                    elif fault == "disconnect":
                        self.close_connection = True
                    elif fault == "500":
                        self.send_response(500)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    else:
                        with lock:
                            stub.graphs[graph] = body
                        self.send_response(204)
                        self.end_headers()
                finally:
                    with lock:
                        stub.active -= 1

            def do_POST(self) -> None:  # noqa: N802 - anything but PUT is recorded and fails
                with lock:
                    stub.requests.append(f"{self.command} {self.path}")
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/store"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubStore]:
    s = StubStore()
    yield s
    s.close()


def write_trig(path: Path, graphs: dict[str, int], base: str = BASE) -> Path:
    """A TriG file with graphs ``base + name`` holding ``n`` triples each."""
    lines = []
    for name, n in graphs.items():
        triples = " ".join(f'<{base}s{i}> <{base}p> "{name} {i}" .' for i in range(n))
        lines.append(f"<{base}{name}> {{ {triples} }}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_endpoint_urls_that_pick_one_graph_or_cannot_be_read_are_refused(
    stub: StubStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from filtag_kg.cli import main

    src = write_trig(tmp_path / "kg.trig", {"a": 1, "b": 1})
    for url, words in (
        (stub.url + "#frag", "fragment"),
        (stub.url + "?graph=" + urllib.parse.quote(BASE + "x"), "graph="),
        (stub.url + "?default", "default="),
        (stub.url.replace("/store", "/st ore"), "space"),
        ("http://[::1/store", "not a valid URL"),
        ("http://127.0.0.1:99999/store", "not a valid URL"),
    ):
        assert main(["publish", str(src), "--endpoint", url, "--quiet"]) == 2, url
        err = capsys.readouterr().err
        assert err.startswith("filtag-kg: error: ") and words in err and len(err.strip().splitlines()) == 1
    assert stub.requests == []
    assert publish(src, stub.url + "?timeout=5", state_file=False).sent  # other parameters are kept


def test_http_client_errors_are_retried_and_reported_per_graph(
    stub: StubStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_trig(tmp_path / "kg.trig", {"a": 2, "b": 3, "c": 1, "d": 1})
    stub.faults = {BASE + "a": ["incomplete"], BASE + "b": ["badstatus", "500"],
                   BASE + "c": ["disconnect"] * 9}
    report = publish(src, stub.url, retries=2, backoff_s=0.01, jobs=2, state_file=False)
    assert sorted(report.sent) == [(BASE + "a", 2), (BASE + "b", 3), (BASE + "d", 1)]
    why = "RemoteDisconnected: Remote end closed connection without response"
    assert report.failed == [(BASE + "c", why)]
    assert [stub.requests.count(BASE + g) for g in "abd"] == [2, 3, 1]
    # c: 3 attempts (one more when it first met a keep-alive connection the store had closed)
    assert stub.requests.count(BASE + "c") in (3, 4) and report.retries == 1 + 2 + 2
    assert set(stub.graphs) == {BASE + "a", BASE + "b", BASE + "d"}
    text = report.summary()
    assert "published 3 graphs (6 triples)" in text and "1 of 4 graphs FAILED" in text and BASE + "c" in text


def test_an_unreachable_endpoint_stops_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_serve import free_port

    from filtag_kg.cli import main

    src = write_trig(tmp_path / "kg.trig", {f"g{i}": 1 for i in range(60)})
    url = f"http://127.0.0.1:{free_port()}/store"
    with pytest.raises(PublishError, match="cannot connect to 127.0.0.1"):
        publish(src, url, backoff_s=0.01)
    assert main(["publish", str(src), "--endpoint", url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("filtag-kg: error: cannot connect") and len(err.strip().splitlines()) == 1
    assert not state_path(src).exists()


def test_parallel_connections_are_bounded_and_progress_is_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from filtag_kg.cli import main

    slow = StubStore(delay_s=0.2)
    try:
        src = write_trig(tmp_path / "kg.trig", {f"g{i}": 2 for i in range(9)})
        assert main(["publish", str(src), "--endpoint", slow.url, "--jobs", "3"]) == 0
        out, err = capsys.readouterr()
        assert "published 9 graphs (18 triples)" in out
        assert "publish" in err and "triples=18" in err  # the progress bar on stderr
        assert 1 < slow.max_active <= 3 and len(slow.graphs) == 9
        assert main(["publish", str(src), "--endpoint", slow.url, "--jobs", "0"]) == 2
    finally:
        slow.close()


def test_a_rerun_sends_only_what_failed_or_changed(stub: StubStore, tmp_path: Path) -> None:
    src = write_trig(tmp_path / "kg.trig", {"a": 1, "b": 2, "c": 3})
    stub.faults = {BASE + "b": ["500"]}
    first = publish(src, stub.url, retries=0)
    assert [g for g, _ in first.failed] == [BASE + "b"] and len(first.sent) == 2
    state = json.loads(state_path(src).read_text())
    assert set(state["endpoints"][stub.url]) == {BASE + "a", BASE + "c"}
    stub.requests.clear()
    second = publish(src, stub.url, retries=0)
    assert stub.requests == [BASE + "b"] and len(second.unchanged) == 2 and not second.failed
    assert "2 of 3 graphs (4 triples) arrived unchanged before" in second.summary()
    write_trig(src, {"a": 1, "b": 2, "c": 4})  # c changed
    stub.requests.clear()
    publish(src, stub.url)
    assert stub.requests == [BASE + "c"] and stub.graphs[BASE + "c"].count(b"\n") == 4
    stub.requests.clear()
    publish(src, stub.url, resend=True)
    assert sorted(stub.requests) == [BASE + "a", BASE + "b", BASE + "c"]
    other = StubStore()  # another store has none of them: the record is per endpoint
    try:
        assert len(publish(src, other.url).sent) == 3
    finally:
        other.close()


def test_local_base_iris_are_refused_unless_allowed(
    stub: StubStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from filtag_kg.cli import main

    for base in ("http://localhost:8000/filtag-kg/", "http://127.0.0.2/kg/", "http://[::1]:8000/kg/"):
        src = write_trig(tmp_path / "local.trig", {"a": 1}, base=base)
        assert main(["publish", str(src), "--endpoint", stub.url, "--quiet"]) == 2, base
        err = capsys.readouterr().err
        assert "--allow-local-base" in err and "--base-iri" in err and len(err.strip().splitlines()) == 1
        assert stub.requests == []
    assert main(["publish", str(src), "--endpoint", stub.url, "--quiet", "--allow-local-base"]) == 0
    assert list(stub.graphs) == ["http://[::1]:8000/kg/a"]


def test_a_store_that_fails_everything_stops_the_run(stub: StubStore, tmp_path: Path) -> None:
    """After 5 graphs in a row failed, the rest are not tried (each would take its retries);
    the rerun sends what failed and the rest."""
    src = write_trig(tmp_path / "kg.trig", {f"g{i:02d}": 1 for i in range(30)})
    stub.faults = {f"{BASE}g{i:02d}": ["500"] for i in range(5, 30)}
    report = publish(src, stub.url, retries=0, jobs=1)
    assert len(report.sent) == 5 and len(stub.requests) == 10
    assert "stopped after 5 graphs in a row failed" in report.summary()
    stub.faults.clear()
    stub.requests.clear()
    again = publish(src, stub.url, retries=0, jobs=1)
    assert len(again.sent) == 25 and len(again.unchanged) == 5 and len(stub.graphs) == 30
