#!/usr/bin/env python3
"""Baseline for the VM benchmark: QEMU's own live migration driven over QMP by a plain script, the same steps Hull
takes (destination overlay, destination QEMU with -incoming, capabilities events+block, block-incremental, migrate,
wait for completion, end the source). Prints one JSON line: wall time, QEMU's total time, downtime, bytes.

usage: qmp_migrate.py SRC_QMP_SOCK DEST_DIR BASE_IMAGE DISK_SIZE MAX_BANDWIDTH|- LIMIT_SECONDS QEMU ARGV...
(the destination argv). A migration that has not completed after LIMIT_SECONDS is cancelled (exit status 1).
"""
import json, os, socket, subprocess, sys, time


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rwb", buffering=0)
        self.events = []
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.f.write((json.dumps(msg) + "\n").encode())
        while True:
            m = self._read()
            if "event" in m:
                self.events.append(m)
                continue
            if "error" in m:
                raise RuntimeError(f"{name}: {m['error']}")
            return m.get("return")

    def wait_event(self, pred, timeout):
        deadline = time.time() + timeout
        while True:
            for e in self.events:
                if pred(e):
                    return e
            self.events.clear()
            self.s.settimeout(max(0.1, deadline - time.time()))
            try:
                m = self._read()
            finally:
                self.s.settimeout(None)
            if "event" in m:
                self.events.append(m)
            if time.time() > deadline:
                raise TimeoutError("no matching event")


def main():
    src_qmp, dest_dir, base, size, bw, limit = sys.argv[1:7]
    argv = sys.argv[7:]
    t0 = time.monotonic()
    disk = os.path.join(dest_dir, "disk0.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk, size], check=True)
    incoming = "unix:" + os.path.join(dest_dir, "migrate.sock")
    log = open(os.path.join(dest_dir, "qemu.log"), "ab")
    subprocess.Popen(["qemu-system-x86_64", *argv, "-incoming", incoming], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=log, cwd=dest_dir, start_new_session=True)
    qmp_path = os.path.join(dest_dir, "qmp.sock")
    while True:
        try:
            dst = Qmp(qmp_path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.02)
    src = Qmp(src_qmp)
    caps = [{"capability": "events", "state": True}, {"capability": "block", "state": True}]
    dst.cmd("migrate-set-capabilities", {"capabilities": caps})
    src.cmd("migrate-set-capabilities", {"capabilities": caps})
    params = {"block-incremental": True}
    if bw != "-":
        params["max-bandwidth"] = int(bw)
    src.cmd("migrate-set-parameters", params)
    src.cmd("migrate", {"uri": incoming})
    try:
        src.wait_event(lambda e: e["event"] == "MIGRATION" and e["data"]["status"] in ("completed", "failed", "cancelled"), float(limit))
    except TimeoutError:
        src.cmd("migrate_cancel")
        print(json.dumps({"status": "not converged"}))
        sys.exit(1)
    q = src.cmd("query-migrate")
    # The completed event comes before QEMU fills in total-time and downtime (0 until then).
    while q["status"] == "completed" and not q.get("total-time"):
        time.sleep(0.01)
        q = src.cmd("query-migrate")
    if q["status"] != "completed":
        print(json.dumps({"status": q["status"]}))
        sys.exit(1)
    while dst.cmd("query-status")["status"] != "running":
        time.sleep(0.02)
    src.cmd("quit")
    wall = (time.monotonic() - t0) * 1000
    ram = q.get("ram", {}).get("transferred", 0)
    blk = q.get("disk", {}).get("transferred", 0)
    print(json.dumps({"status": "completed", "wall_ms": wall, "total_ms": q.get("total-time"), "downtime_ms": q.get("downtime"),
                      "bytes": ram + blk}))


if __name__ == "__main__":
    main()
