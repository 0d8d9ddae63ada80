#!/usr/bin/env python3
"""Drive the real OpenStack clients against a running shutoff-api.

Run with the python of the venv made by scripts/py-clients-venv:

    target/py-clients-venv/bin/python tests/clients/check_clients.py \
        --endpoint http://127.0.0.1:PORT/v2/<project_id> --token T \
        --cli-server <name1> --sdk-server <name2> [--novaclient-server <name3>]

The named servers must exist, be ACTIVE and belong to the endpoint's project. Checks:
  a. `openstack server stop <name1>`, then `server show` until SHUTOFF
     (vm_state stopped, task_state empty, power state 4 shown as "Shutdown");
  d. `openstack server stop <name1>` again: exit non-zero, "Cannot 'stop' instance",
     and a request id req-... (the CLI prints it only with --debug);
  b. openstacksdk find_server / stop_server / wait_for_server(SHUTOFF);
  c. python-novaclient 2.1 find / stop / get until SHUTOFF, then stop again:
     refused with "Cannot 'stop' instance" and "Request-ID: req-...".
Each check prints `ok <what>` or `FAIL <what>: <why>`; exit 0 only if all pass.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback

# Keep the outside world's OpenStack settings out of this process and its children:
# openstacksdk and the CLI read OS_* variables, and a proxy must not see 127.0.0.1.
for _k in list(os.environ):
    if _k.startswith("OS_") or _k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        del os.environ[_k]
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"

REQ_ID = r"req-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
CANNOT_STOP = "Cannot 'stop' instance"

results = []


def report(ok, what, why=""):
    results.append(ok)
    print(f"ok {what}" if ok else f"FAIL {what}: {why}", flush=True)


def one_line(text, limit=600):
    text = " | ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Check(Exception):
    """A failed expectation; its message is the `why`."""


# ---------------------------------------------------------------- openstack CLI
class Cli:
    def __init__(self, openstack_bin, endpoint, token, timeout):
        self.base = [openstack_bin, "--os-auth-type", "admin_token",
                     "--os-endpoint", endpoint, "--os-token", token]
        self.timeout = timeout

    def run(self, *args):
        try:
            return subprocess.run(self.base + list(args), capture_output=True, text=True,
                                  timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise Check(f"`openstack {' '.join(args)}` did not finish in {self.timeout}s")

    def ok(self, *args):
        p = self.run(*args)
        if p.returncode != 0:
            raise Check(f"`openstack {' '.join(args)}` exited {p.returncode}: {one_line(p.stderr or p.stdout)}")
        return p.stdout

    def show(self, name):
        out = self.ok("server", "show", name, "-f", "json")
        try:
            return json.loads(out)
        except ValueError:
            raise Check(f"`server show -f json` printed no JSON: {one_line(out)}")


def check_cli(cli, name, wait):
    cli.ok("server", "stop", name)
    deadline = time.monotonic() + wait
    while True:
        srv = cli.show(name)
        if srv.get("status") == "SHUTOFF":
            break
        if srv.get("status") == "ERROR":
            raise Check(f"server went to ERROR: {one_line(json.dumps(srv))}")
        if time.monotonic() > deadline:
            raise Check(f"status still {srv.get('status')!r} (task_state "
                        f"{srv.get('OS-EXT-STS:task_state')!r}) after {wait}s")
        time.sleep(1)
    problems = []
    if srv.get("OS-EXT-STS:vm_state") != "stopped":
        problems.append(f"vm_state {srv.get('OS-EXT-STS:vm_state')!r}, want 'stopped'")
    if srv.get("OS-EXT-STS:task_state") not in (None, ""):
        problems.append(f"task_state {srv.get('OS-EXT-STS:task_state')!r}, want none")
    if srv.get("OS-EXT-STS:power_state") not in (4, "4", "Shutdown"):
        problems.append(f"power_state {srv.get('OS-EXT-STS:power_state')!r}, want 4")
    # The human-readable (table) format turns power state 4 into "Shutdown".
    table = cli.ok("server", "show", name, "-f", "table", "-c", "OS-EXT-STS:power_state")
    if not re.search(r"\|\s*OS-EXT-STS:power_state\s*\|\s*Shutdown\s*\|", table):
        problems.append(f"table shows power state as {one_line(table)!r}, want 'Shutdown'")
    if problems:
        raise Check("; ".join(problems))


def check_cli_refused(cli, name):
    # Without --debug the CLI prints only "ConflictException: 409: Client Error for url:
    # ..., <message>"; with --debug keystoneauth logs the response headers and
    # "POST call to compute for <url> used request id req-...".
    p = cli.run("--debug", "server", "stop", name)
    out = p.stdout + p.stderr
    if p.returncode == 0:
        raise Check("`openstack server stop` of a stopped server exited 0")
    if CANNOT_STOP not in out:
        raise Check(f"no {CANNOT_STOP!r} in the output: {one_line(p.stderr[-600:])}")
    m = re.search(r"POST call to compute for \S+/action used request id (" + REQ_ID + ")", out)
    if not m:
        raise Check("no request id (req-<uuid>) logged for the refused POST .../action")
    rid = m.group(1)
    resp = [line for line in out.splitlines() if line.startswith("RESP: [4") and rid in line]
    if not resp:
        raise Check(f"request id {rid} not found in a 4xx response's headers")
    for header in ("X-Compute-Request-Id", "X-OpenStack-Request-Id"):
        if not re.search(re.escape(header) + r":\s*" + re.escape(rid), resp[0], re.IGNORECASE):
            raise Check(f"the refusal's {header} is missing or differs from {rid}")
    status = re.match(r"RESP: \[(\d+)\]", resp[0]).group(1)
    return f"HTTP {status}, {rid}"


# ---------------------------------------------------------------- openstacksdk
def check_sdk(endpoint, token, name, wait):
    import openstack

    conn = openstack.connect(auth_type="admin_token",
                             auth={"endpoint": endpoint, "token": token},
                             compute_endpoint_override=endpoint,
                             load_yaml_config=False, load_envvars=False)
    try:
        server = conn.compute.find_server(name, ignore_missing=False)
        if server.name != name:
            raise Check(f"find_server({name!r}) returned server named {server.name!r}")
        conn.compute.stop_server(server)
        server = conn.compute.wait_for_server(server, status="SHUTOFF", wait=wait, interval=1)
        if server.vm_state != "stopped":
            raise Check(f"vm_state {server.vm_state!r}, want 'stopped'")
        if server.power_state != 4:
            raise Check(f"power_state {server.power_state!r}, want 4")
        if server.task_state:
            raise Check(f"task_state {server.task_state!r}, want none")
    finally:
        conn.close()


# ---------------------------------------------------------------- python-novaclient
def check_novaclient(endpoint, token, name, wait):
    from keystoneauth1 import token_endpoint
    from keystoneauth1.session import Session
    from novaclient import client, exceptions

    nova = client.Client("2.1", session=Session(auth=token_endpoint.Token(endpoint, token)),
                         endpoint_override=endpoint)
    server = nova.servers.find(name=name)
    nova.servers.stop(server)
    deadline = time.monotonic() + wait
    while True:
        server = nova.servers.get(server.id)
        if server.status == "SHUTOFF":
            break
        if server.status == "ERROR":
            raise Check("server went to ERROR")
        if time.monotonic() > deadline:
            raise Check(f"status still {server.status!r} after {wait}s")
        time.sleep(1)
    vm_state = getattr(server, "OS-EXT-STS:vm_state", None)
    power_state = getattr(server, "OS-EXT-STS:power_state", None)
    if vm_state != "stopped" or power_state != 4:
        raise Check(f"vm_state {vm_state!r} / power_state {power_state!r}, want 'stopped' / 4")
    for rid in server.request_ids:
        if not re.fullmatch(REQ_ID, rid or ""):
            raise Check(f"response request id {rid!r} is not req-<uuid>")

    try:
        nova.servers.stop(server)
    except exceptions.ClientException as e:
        text = str(e)
        if CANNOT_STOP not in text or not re.search(r"Request-ID: " + REQ_ID, text):
            raise Check(f"refusal lacks {CANNOT_STOP!r} or 'Request-ID: req-...': {text}")
        if e.code not in (400, 409):
            raise Check(f"refusal answered HTTP {e.code}, want 409 (or 400)")
        return f"refusal: {text}"
    raise Check("stopping the stopped server again was accepted")


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True, help="http://HOST:PORT/v2/<project_id>")
    ap.add_argument("--token", required=True)
    ap.add_argument("--cli-server", required=True, help="name of an ACTIVE server for the CLI")
    ap.add_argument("--sdk-server", required=True, help="name of an ACTIVE server for openstacksdk")
    ap.add_argument("--novaclient-server", help="name of an ACTIVE server for python-novaclient")
    ap.add_argument("--openstack", default=os.path.join(os.path.dirname(sys.executable), "openstack"),
                    help="the openstack CLI (default: next to this python)")
    ap.add_argument("--wait", type=float, default=30, help="seconds to wait for SHUTOFF")
    a = ap.parse_args()
    endpoint = a.endpoint.rstrip("/")

    cli = Cli(a.openstack, endpoint, a.token, timeout=60)
    checks = [
        ("openstack CLI: server stop + show -> SHUTOFF/stopped/Shutdown",
         lambda: check_cli(cli, a.cli_server, a.wait)),
        ("openstack CLI: stopping a stopped server is refused with a request id",
         lambda: check_cli_refused(cli, a.cli_server)),
        ("openstacksdk: find_server + stop_server + wait_for_server(SHUTOFF)",
         lambda: check_sdk(endpoint, a.token, a.sdk_server, a.wait)),
    ]
    if a.novaclient_server:
        checks.append(("novaclient 2.1: find + stop + get -> SHUTOFF, stop again refused",
                       lambda: check_novaclient(endpoint, a.token, a.novaclient_server, a.wait)))
    for what, fn in checks:
        try:
            note = fn()
            report(True, what + (f" ({note})" if note else ""))
        except Check as e:
            report(False, what, str(e))
        except Exception as e:  # a client crashed: show where
            tb = traceback.extract_tb(e.__traceback__)[-1]
            report(False, what, f"{type(e).__name__}: {one_line(e)} "
                                f"(at {os.path.basename(tb.filename)}:{tb.lineno})")
    print(f"{results.count(True)} passed, {results.count(False)} failed", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
