"""Test helper: a real S3-protocol server (moto's threaded server) on 127.0.0.1.

Used by tests/store/ and importable by any other test folder (``from tests.s3server import
s3_server``). The server speaks the S3 wire protocol over HTTP, so s3fs/botocore run their
real request, signing, retry and error-translation code (reliability-matrix FT-4..FT-6 on
the S3 backend); nothing is mocked inside the process under test.

Example::

    with s3_server() as srv:
        srv.create_bucket("pacsd")
        store = open_store("s3://pacsd/objects", **srv.store_options())
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterator

#: Dummy credentials: moto accepts any; botocore insists on having some.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint_url: str

    def store_options(self, **extra: Any) -> dict[str, Any]:
        """Keyword options for ``pacsd.store.open_store("s3://...", **options)``."""
        return {"endpoint_url": self.endpoint_url, "key": ACCESS_KEY, "secret": SECRET_KEY,
                "region": REGION, **extra}

    def client(self) -> Any:
        """A boto3 S3 client for test setup and for tampering behind pacsd's back."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


def _drop_server_date(app: Any) -> Any:
    """WSGI middleware: drop the app's own ``Server`` and ``Date`` response headers.

    moto sends ``Server: amazon.com`` and the stdlib request handler under werkzeug adds
    ``Server``/``Date`` again; aiohttp's strict pure-Python parser (used under
    ``python -X dev`` or AIOHTTP_NO_EXTENSIONS) rejects the duplicate with "400 Duplicate
    'Server' header", which would turn every S3 call into a transport error.
    """
    def wrapped(environ: dict, start_response: Any) -> Any:
        def sr(status: str, headers: list, exc_info: Any = None) -> Any:
            kept = [(k, v) for k, v in headers if k.lower() not in ("server", "date")]
            return start_response(status, kept, exc_info)
        return app(environ, sr)
    return wrapped


def _moto_server_class() -> type:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import make_server

    class _Server(ThreadedMotoServer):
        """ThreadedMotoServer whose WSGI app is wrapped by :func:`_drop_server_date`."""

        def _server_entry(self) -> None:
            app = _drop_server_date(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True)
            self._server_ready_event.set()
            self._server.serve_forever()

    return _Server


@contextlib.contextmanager
def s3_server(port: int | None = None) -> Iterator[S3Server]:
    """Start moto's ThreadedMotoServer on 127.0.0.1, yield it, stop it.

    Sets dummy AWS credentials in the environment for the duration (so no real
    credentials from the host can ever be picked up) and restores the previous values.
    """
    import logging

    # werkzeug logs every request at INFO; keep test output readable.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": REGION, "AWS_SESSION_TOKEN": None,
           "AWS_PROFILE": None, "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server = _moto_server_class()(ip_address="127.0.0.1", port=port or free_port(),
                                  verbose=False)
    server.start()
    try:
        host, p = server.get_host_and_port()
        yield S3Server(endpoint_url=f"http://{host}:{p}")
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
