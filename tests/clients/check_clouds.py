#!/usr/bin/env python3
"""Drive the real OpenStack clients against shutoff through a clouds.yaml.

Run with the python of the venv made by scripts/py-clients-venv:

    target/py-clients-venv/bin/python tests/clients/check_clouds.py \
        --config clouds.yaml --cloud C --admin-cloud A [--reader-cloud R] \
        --stop a,b,c --sdk-server d --nova-server e --stopped f \
        --host H --on-host c,e

The clouds' `auth_url` is shutoff's own identity service (local mode) or a real
Keystone whose catalog names shutoff as the compute service (Keystone mode):
the same checks hold in both. The named servers must exist in C's project;
all but --stopped must be ACTIVE; --on-host lists the servers on host H.
Checks, each printing `ok <what>` or `FAIL <what>: <why>`:
  1. `openstack server list` (table and -f json) shows every server with its status;
     `--long` adds task state, power state, image and host (admins) columns;
  2. `--status SHUTOFF`, `--name`, and (admin) `--all-projects --host H` and `--project`
     (the cloud's project) filter as Nova;
     a non-admin's `--all-projects` is refused with Nova's 403, not a traceback;
  3. `openstack server stop a b c` stops several at once, by name, until SHUTOFF;
  4. `server show`, `server event list` and `server event show` of a stopped server;
  5. stopping it again exits 1 with Nova's "Cannot 'stop' instance" and no traceback;
  6. (reader cloud) a reader's stop is refused with Nova's 403;
  7. openstacksdk `openstack.connect(cloud=C)`: list, find, stop, wait_for_server;
  8. the `nova` CLI (novaclient) `list` and `stop`, with the cloud's auth as flags.
Exit 0 only if all pass. OS_* variables (and proxies) from outside are dropped.
"""
import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
import traceback

for _k in list(os.environ):
    if _k.startswith("OS_") or _k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        del os.environ[_k]
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"

REQ_ID = r"req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CANNOT_STOP = "Cannot 'stop' instance"
results = []
CALLS_LOCK = threading.Lock()


class Check(Exception):
    """A failed expectation; its message is the `why`."""


def report(ok, what, why=""):
    results.append(ok)
    print(f"ok {what}" if ok else f"FAIL {what}: {why}", flush=True)


def one_line(text, limit=800):
    text = " | ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Cli:
    """The `openstack` (or `nova`) CLI, with a timeout and no stdin."""

    def __init__(self, binary, base_args, timeout=60):
        self.base = [binary] + base_args
        self.timeout = timeout
        self.calls = 0

    def run(self, *args):
        with CALLS_LOCK:
            self.calls += 1
        try:
            return subprocess.run(self.base + list(args), capture_output=True, text=True,
                                  timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise Check(f"`{' '.join(args)}` did not finish in {self.timeout}s")

    def ok(self, *args):
        p = self.run(*args)
        if p.returncode != 0 or "Traceback" in p.stderr:
            raise Check(f"`{' '.join(args)}` exited {p.returncode}: {one_line(p.stderr or p.stdout)}")
        return p.stdout

    def json(self, *args):
        out = self.ok(*args, "-f", "json")
        try:
            return json.loads(out)
        except ValueError:
            raise Check(f"`{' '.join(args)} -f json` printed no JSON: {one_line(out)}")


def names(rows):
    return {r["Name"] for r in rows}


def expect_refusal(p, what, needles):
    out = p.stdout + p.stderr
    if p.returncode == 0:
        raise Check(f"{what} exited 0")
    if "Traceback" in out:
        raise Check(f"{what} printed a traceback: {one_line(out[-800:])}")
    for n in needles:
        if n not in out:
            raise Check(f"no {n!r} in what {what} printed: {one_line(out[-800:])}")
    return one_line(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.stdout)


def check_list(cli, a):
    everyone = set(a.stop) | {a.sdk_server, a.nova_server, a.stopped}
    table = cli.ok("server", "list")
    missing = [n for n in everyone if not re.search(r"\|\s*" + re.escape(n) + r"\s*\|", table)]
    if missing:
        raise Check(f"the table lacks {missing}: {one_line(table)}")
    rows = cli.json("server", "list")
    if not everyone <= names(rows):
        raise Check(f"-f json lists {sorted(names(rows))}, want at least {sorted(everyone)}")
    status = {r["Name"]: r["Status"] for r in rows}
    wrong = {n: s for n, s in status.items() if n in everyone and s != ("SHUTOFF" if n == a.stopped else "ACTIVE")}
    if wrong:
        raise Check(f"statuses {wrong}")
    return f"{len(rows)} servers, columns {list(rows[0].keys())}"


def check_long(cli, admin, a):
    rows = cli.json("server", "list", "--long")
    row = next((r for r in rows if r["Name"] == a.stopped), None)
    if row is None:
        raise Check(f"--long does not list {a.stopped}")
    for col in ("Task State", "Power State", "Image Name", "Availability Zone", "Host"):
        if col not in row:
            raise Check(f"--long has no {col!r} column: {list(row)}")
    if row["Power State"] not in ("Shutdown", 4):
        raise Check(f"{a.stopped}'s power state shows {row['Power State']!r}")
    if row["Host"]:
        raise Check(f"a member sees the host {row['Host']!r} (Nova: admins only)")
    admin_rows = admin.json("server", "list", "--long")
    hosts = {r["Name"]: r["Host"] for r in admin_rows}
    if not all(hosts.get(n) == a.host for n in a.on_host):
        raise Check(f"an admin's --long shows hosts {hosts}, want {a.host} for {a.on_host}")
    return f"row {json.dumps(row)}"


def check_filters(cli, admin, a):
    shutoff = names(cli.json("server", "list", "--status", "SHUTOFF"))
    if shutoff != {a.stopped}:
        raise Check(f"--status SHUTOFF lists {sorted(shutoff)}, want [{a.stopped}]")
    named = names(cli.json("server", "list", "--name", a.sdk_server))
    if named != {a.sdk_server}:
        raise Check(f"--name {a.sdk_server} lists {sorted(named)}")
    rows = admin.json("server", "list", "--all-projects", "--host", a.host)
    if names(rows) != set(a.on_host):
        raise Check(f"--all-projects --host {a.host} lists {sorted(names(rows))}, want {sorted(a.on_host)}")
    if not all(r.get("Project ID") for r in rows):
        raise Check(f"--all-projects shows no Project ID column: {rows}")
    # --project: Keystone looks the name up; the local identity service
    # answers lookups 403, so the CLI passes the id on.
    import openstack.config

    auth = openstack.config.OpenStackConfig().get_one(a.admin_cloud).config["auth"]
    project = auth.get("project_id") or auth["project_name"]
    everyone = set(a.stop) | {a.sdk_server, a.nova_server, a.stopped} | set(a.on_host)
    listed = names(admin.json("server", "list", "--project", project))
    if listed != everyone:
        raise Check(f"--project {project} lists {sorted(listed)}, want {sorted(everyone)}")
    said = expect_refusal(cli.run("server", "list", "--all-projects"),
                          "a member's `server list --all-projects`",
                          ["get_all_tenants", "403"])
    return f"member --all-projects: {said}"


def wait_shutoff(cli, wanted, wait):
    deadline = time.monotonic() + wait
    while True:
        done = names(cli.json("server", "list", "--status", "SHUTOFF"))
        if set(wanted) <= done:
            return
        if time.monotonic() > deadline:
            raise Check(f"not SHUTOFF after {wait}s: {sorted(set(wanted) - done)}")
        time.sleep(0.5)


def check_stop_several(cli, a):
    cli.ok("server", "stop", *a.stop)
    wait_shutoff(cli, a.stop, a.wait)


def check_show_and_events(cli, a):
    name = a.stop[0]
    srv = cli.json("server", "show", name)
    if srv.get("status") != "SHUTOFF" or srv.get("OS-EXT-STS:vm_state") != "stopped":
        raise Check(f"show: status {srv.get('status')!r}, vm_state {srv.get('OS-EXT-STS:vm_state')!r}")
    events = cli.json("server", "event", "list", name)
    stops = [e for e in events if e.get("Action") == "stop"]
    if len(stops) != 1 or not re.fullmatch(REQ_ID, stops[0].get("Request ID", "")):
        raise Check(f"event list: {events}")
    rid = stops[0]["Request ID"]
    shown = cli.json("server", "event", "show", name, rid)
    evs = shown.get("events") or []
    if not any(e.get("event") == "compute_stop_instance" and e.get("result") == "Success" for e in evs):
        raise Check(f"event show: {one_line(json.dumps(shown))}")
    return rid


def check_stopped_refused(cli, a):
    return expect_refusal(cli.run("server", "stop", a.stop[0]),
                          "stopping a stopped server", [CANNOT_STOP])


def check_reader(reader, a):
    return expect_refusal(reader.run("server", "stop", a.nova_server), "a reader's stop",
                          ["Policy doesn't allow os_compute_api:servers:stop", "403"])


def check_sdk(a):
    import openstack

    conn = openstack.connect(cloud=a.cloud)
    try:
        listed = {s.name for s in conn.compute.servers()}
        if a.sdk_server not in listed or a.stopped not in listed:
            raise Check(f"compute.servers() lists {sorted(listed)}")
        server = conn.compute.find_server(a.sdk_server, ignore_missing=False)
        conn.compute.stop_server(server)
        server = conn.compute.wait_for_server(server, status="SHUTOFF", wait=a.wait, interval=0.5)
        if server.vm_state != "stopped" or server.power_state != 4:
            raise Check(f"vm_state {server.vm_state!r}, power_state {server.power_state!r}")
        return f"{len(listed)} servers listed"
    finally:
        conn.close()


def nova_cli(nova_bin, a):
    """The cloud's auth as `nova` flags (novaclient has no --os-cloud)."""
    import openstack.config

    cloud = openstack.config.OpenStackConfig().get_one(a.cloud)
    auth = cloud.config["auth"]
    args = ["--os-auth-type", cloud.config["auth_type"]]
    for k, v in sorted(auth.items()):
        if v is not None:
            args += [f"--os-{k.replace('_', '-')}", str(v)]
    if cloud.config.get("region_name"):
        args += ["--os-region-name", cloud.config["region_name"]]
    return Cli(nova_bin, args)


def check_nova(nova, a):
    listed = nova.ok("list")
    if a.nova_server not in listed or "SHUTOFF" not in listed:
        raise Check(f"`nova list`: {one_line(listed)}")
    nova.ok("stop", a.nova_server)
    deadline = time.monotonic() + a.wait
    while True:
        out = nova.ok("list", "--name", a.nova_server)
        row = [line for line in out.splitlines() if f" {a.nova_server} " in line]
        if row and "SHUTOFF" in row[0]:
            break
        if time.monotonic() > deadline:
            raise Check(f"`nova list` still shows {one_line(out)}")
        time.sleep(0.5)
    p = nova.run("stop", a.nova_server)
    return expect_refusal(p, "`nova stop` of a stopped server", [CANNOT_STOP])


def run_check(what, fn):
    """(ok, what, why) of one check, timed."""
    t = time.monotonic()
    try:
        note = fn()
        return True, f"{what} [{time.monotonic() - t:.1f}s]" + (f" ({note})" if note else ""), ""
    except Check as e:
        return False, what, str(e)
    except Exception as e:  # a client crashed: show where
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return False, what, (f"{type(e).__name__}: {one_line(e)} "
                             f"(at {os.path.basename(tb.filename)}:{tb.lineno})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the clouds.yaml")
    ap.add_argument("--cloud", required=True, help="a member's cloud")
    ap.add_argument("--admin-cloud", required=True, help="an admin's cloud, same project")
    ap.add_argument("--reader-cloud", help="a reader's cloud, same project")
    ap.add_argument("--stop", required=True, type=lambda s: s.split(","),
                    help="ACTIVE servers the CLI stops at once, comma-separated")
    ap.add_argument("--sdk-server", required=True)
    ap.add_argument("--nova-server", required=True)
    ap.add_argument("--stopped", required=True, help="a server already SHUTOFF")
    ap.add_argument("--host", required=True)
    ap.add_argument("--on-host", required=True, type=lambda s: s.split(","),
                    help="every server of the project on --host")
    ap.add_argument("--wait", type=float, default=30)
    a = ap.parse_args()
    os.environ["OS_CLIENT_CONFIG_FILE"] = os.path.abspath(a.config)
    bindir = os.path.dirname(sys.executable)
    openstack_bin = os.path.join(bindir, "openstack")
    cli = Cli(openstack_bin, ["--os-cloud", a.cloud])
    admin = Cli(openstack_bin, ["--os-cloud", a.admin_cloud])
    reader = Cli(openstack_bin, ["--os-cloud", a.reader_cloud]) if a.reader_cloud else None

    started = time.monotonic()
    checks = [
        ("openstack server list (table, -f json)", lambda: check_list(cli, a)),
        ("openstack server list --long (member, admin)", lambda: check_long(cli, admin, a)),
        ("openstack server list --status / --name / --all-projects --host / --project",
         lambda: check_filters(cli, admin, a)),
        (f"openstack server stop {' '.join(a.stop)} -> SHUTOFF", lambda: check_stop_several(cli, a)),
        ("openstack server show / event list / event show", lambda: check_show_and_events(cli, a)),
        ("openstack server stop of a stopped server is refused", lambda: check_stopped_refused(cli, a)),
    ]
    if reader:
        checks.append(("openstack server stop by a reader is refused", lambda: check_reader(reader, a)))
    checks += [
        ("openstacksdk connect(cloud=...): servers, find, stop, wait", lambda: check_sdk(a)),
        ("nova list / nova stop / nova stop again refused",
         lambda: check_nova(nova_cli(os.path.join(bindir, "nova"), a), a)),
    ]
    # The first three only read, and each CLI call is mostly the client's own
    # start-up: they run side by side; the rest in order, as they change state.
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        reads = [pool.submit(run_check, what, fn) for what, fn in checks[:3]]
        outcomes = [f.result() for f in reads]
    for outcome in outcomes:
        report(*outcome)
    for what, fn in checks[3:]:
        report(*run_check(what, fn))
    calls = cli.calls + admin.calls + (reader.calls if reader else 0)
    print(f"{results.count(True)} passed, {results.count(False)} failed "
          f"({calls} openstack CLI calls, {time.monotonic() - started:.1f}s)", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
