"""A local HTTP server that answers the Hugging Face Hub's file-resolve protocol, for offline tests.

``hf_hub_download`` sends ``HEAD {endpoint}/{repo_id}/resolve/{revision}/{path}`` and reads the commit
(``X-Repo-Commit``), the ETag and the size, then ``GET``s the same URL. Unknown repos and files answer 404
with the ``X-Error-Code`` the Hub uses (``RepositoryNotFound`` / ``EntryNotFound``).
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class HubRepo:
    """A repo with named revisions, each a {path: bytes} snapshot."""

    def __init__(self):
        self.revisions: dict[str, tuple[str, dict[str, bytes]]] = {}

    def add_revision(self, names: list[str], folder: Path) -> str:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        commit = hashlib.sha1(b"".join(k.encode() + v for k, v in files.items())).hexdigest()
        for name in names + [commit]:
            self.revisions[name] = (commit, files)
        return commit


class HubServer:
    def __init__(self):
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _resolve(self, send_body: bool):
                server.requests.append((self.command, self.path))
                parts = unquote(self.path.split("?")[0]).strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "RepositoryNotFound")
                repo_id, revision, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                repo = server.repos.get(repo_id)
                if repo is None:
                    return self._error(401, "RepositoryNotFound")
                if revision not in repo.revisions:
                    return self._error(404, "RevisionNotFound")
                commit, files = repo.revisions[revision]
                if path not in files:
                    return self._error(404, "EntryNotFound")
                body = files[path]
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def _error(self, status: int, code: str):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                self._resolve(send_body=False)

            def do_GET(self):
                self._resolve(send_body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
