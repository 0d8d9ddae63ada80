#!/usr/bin/env python3
"""Run a real, throwaway OpenStack Keystone for api/tests/keystone.rs.

Run with the python of the venv made by scripts/keystone-venv:

    target/keystone-venv/bin/python tests/keystone/run_keystone.py \
        [--port 0] [--admin-password secret] [--workdir DIR] \
        [--tls-cert CERT.pem --tls-key KEY.pem [--tls-host localhost]]

Everything lives in one directory (a temporary one removed on exit, or
--workdir, left for the caller to remove): a sqlite database,
fernet token and credential key repositories, keystone.conf. It runs
`keystone-manage db_sync`, `fernet_setup`, `credential_setup` and `bootstrap`
(admin user, project and role, RegionOne, identity endpoints), then serves
`keystone.wsgi.api:application` with the standard library's wsgiref on
127.0.0.1 and prints one line:

    KEYSTONE READY http://127.0.0.1:PORT/v3 setup_secs=S

(with --tls-cert, `https://localhost:PORT/v3`: TLS on the same socket).

For the tests it also answers `GET /__requests` with how many requests of
each `METHOD /path` it has served (JSON), so a test can count validations.
It exits when its standard input closes, so it never outlives the test.
"""
import argparse
import collections
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def write_config(work):
    conf = os.path.join(work, "keystone.conf")
    with open(conf, "w") as f:
        f.write(
            f"""[DEFAULT]
debug = false
use_stderr = true

[database]
connection = sqlite:///{work}/keystone.db

[token]
provider = fernet
expiration = 3600

[fernet_tokens]
key_repository = {work}/fernet-keys

[fernet_receipts]
key_repository = {work}/fernet-keys

[credential]
key_repository = {work}/credential-keys

[identity]
# Few rounds: the test authenticates often and never stores real secrets.
password_hash_rounds = 4
"""
        )
    return conf


def manage(venv_bin, conf, *args):
    cmd = [os.path.join(venv_bin, "keystone-manage"), "--config-file", conf, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"run_keystone: keystone-manage {args[0]} exited {p.returncode}")


def counting(app, counts, lock):
    def wrapped(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/__requests":
            with lock:
                body = json.dumps(dict(counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        with lock:
            counts[f"{environ.get('REQUEST_METHOD')} {path}"] += 1
        return app(environ, start_response)

    return wrapped


def exit_when_stdin_closes():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--admin-password", default="admin-secret")
    ap.add_argument("--workdir", help="an empty or new directory; not removed on exit")
    ap.add_argument("--tls-cert", help="serve https with this PEM certificate (and --tls-key)")
    ap.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    ap.add_argument(
        "--tls-host", default="localhost", help="the host name of the https URL (the certificate's)"
    )
    args = ap.parse_args()

    start = time.monotonic()
    venv_bin = os.path.dirname(sys.executable)
    if args.workdir:
        work = os.path.abspath(args.workdir)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="shutoff-keystone-")
    try:
        # Bind first: the identity endpoints registered by bootstrap hold the port.
        server = WSGIServer(("127.0.0.1", args.port), QuietHandler)
        port = server.server_address[1]
        url = f"http://127.0.0.1:{port}/v3"
        if args.tls_cert:
            # TLS straight on the listening socket: each accepted connection
            # does its handshake before the request is read; a client that
            # refuses our certificate only costs that connection.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
            url = f"https://{args.tls_host}:{port}/v3"

        conf = write_config(work)
        manage(venv_bin, conf, "db_sync")
        user, group = str(os.getuid()), str(os.getgid())
        manage(venv_bin, conf, "fernet_setup", "--keystone-user", user, "--keystone-group", group)
        manage(venv_bin, conf, "credential_setup", "--keystone-user", user, "--keystone-group", group)
        manage(
            venv_bin, conf, "bootstrap",
            "--bootstrap-password", args.admin_password,
            "--bootstrap-admin-url", url,
            "--bootstrap-internal-url", url,
            "--bootstrap-public-url", url,
            "--bootstrap-region-id", "RegionOne",
        )

        os.environ["OS_KEYSTONE_CONFIG_FILES"] = conf
        # Keystone's config loader parses the command line: give it none.
        sys.argv = sys.argv[:1]
        from keystone.wsgi.api import application

        counts, lock = collections.Counter(), threading.Lock()
        server.set_app(counting(application, counts, lock))
        threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
        print(f"KEYSTONE READY {url} setup_secs={time.monotonic() - start:.1f}", flush=True)
        server.serve_forever()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
