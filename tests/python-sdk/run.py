"""Runs centrifuge-python's own test suite (from its PyPI source distribution) against Hubbub.

Called by scripts/test-python-sdk.sh with the venv's Python. It:

1. starts `hubbub serve` with hubbub.toml (the equivalent of the sdist's docker-compose.yml)
   on a free port; a key the server does not accept yet is left out of the config and
   reported as the pseudo-test `config <key>`, so it is tracked like a failing test;
2. copies the unpacked sdist and applies the one edit: `localhost:8000`, hardcoded in the
   tests, becomes the server's address (`127.0.0.1:<port>`);
3. runs `unittest discover -s tests` in a child process, each test under a deadline: the SDK
   reconnects forever and many tests await futures without a timeout, so a hang must become
   a failure. A test over its deadline is recorded as `timeout` (with the subtest it was in),
   the child is killed, and a new child goes on with the tests not yet started;
4. compares the outcome with known-failures.txt: a failure that is not listed fails the run;
   a listed one that passes is reported, so the list shrinks.

Results are recorded per subtest: the suite runs most tests twice, `use_protobuf=False` and
`True`, as subtests, and a listed id may be a test (`tests.m.C.test`) or one subtest of it
(`tests.m.C.test [use_protobuf=True]`).
"""

import argparse
import contextlib
import enum
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------------------
# The child: runs the tests, writing one JSON line per event to the events file.
# ---------------------------------------------------------------------------------------------


def _fmt_param(value):
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def subtest_id(test_id, params):
    """`test.id [k=v, ...]`: stable across runs (no object addresses in it)."""
    inner = ", ".join(f"{k}={_fmt_param(v)}" for k, v in params.items())
    return f"{test_id} [{inner}]"


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


class _EventResult(unittest.TestResult):
    """Writes every start, outcome and stop at once (flushed): the parent may kill us."""

    def __init__(self, out):
        super().__init__()
        self._out = out

    def emit(self, **event):
        self._out.write(json.dumps(event) + "\n")
        self._out.flush()

    def _err(self, err):
        return "".join(traceback.format_exception(*err))

    def startTest(self, test):  # noqa: N802 - unittest's name
        super().startTest(test)
        # Markers in the SDK's debug log (our stderr), to find a test's lines.
        print(f"\n===== START {test.id()}", file=sys.stderr, flush=True)
        self.emit(event="start", id=test.id())

    def stopTest(self, test):  # noqa: N802
        super().stopTest(test)
        print(f"===== STOP {test.id()}", file=sys.stderr, flush=True)
        self.emit(event="stop", id=test.id())

    def addSuccess(self, test):  # noqa: N802
        super().addSuccess(test)
        self.emit(event="outcome", id=test.id(), outcome="pass")

    def addFailure(self, test, err):  # noqa: N802
        super().addFailure(test, err)
        self.emit(event="outcome", id=test.id(), outcome="fail", detail=self._err(err))

    def addError(self, test, err):  # noqa: N802
        super().addError(test, err)
        # A setUpModule/setUpClass error comes with an _ErrorHolder whose id names the fixture.
        self.emit(event="outcome", id=test.id(), outcome="error", detail=self._err(err))

    def addSkip(self, test, reason):  # noqa: N802
        super().addSkip(test, reason)
        self.emit(event="outcome", id=test.id(), outcome="skip", detail=reason)

    def addExpectedFailure(self, test, err):  # noqa: N802
        super().addExpectedFailure(test, err)
        self.emit(event="outcome", id=test.id(), outcome="pass")

    def addUnexpectedSuccess(self, test):  # noqa: N802
        super().addUnexpectedSuccess(test)
        self.emit(event="outcome", id=test.id(), outcome="fail", detail="unexpected success")

    def addSubTest(self, test, subtest, err):  # noqa: N802
        super().addSubTest(test, subtest, err)
        sid = subtest_id(test.id(), subtest.params)
        if err is None:
            self.emit(event="outcome", id=sid, outcome="pass")
        else:
            failed = issubclass(err[0], test.failureException)
            self.emit(
                event="outcome", id=sid, outcome="fail" if failed else "error", detail=self._err(err)
            )


def child_main(events_path, skip_path):
    sys.path.insert(0, os.getcwd())
    skip = set()
    if skip_path and os.path.exists(skip_path):
        with open(skip_path) as f:
            skip = {line.rstrip("\n") for line in f if line.strip()}
    with open(events_path, "a") as out:
        result = _EventResult(out)

        # Announce each subtest as it starts, so a hang is blamed on the subtest it is in.
        original = unittest.TestCase.subTest

        @functools.wraps(original)
        @contextlib.contextmanager
        def subtest(self, msg=None, **params):
            result.emit(event="subtest", id=subtest_id(self.id(), params))
            with original(self, msg, **params) if msg is not None else original(self, **params):
                yield

        unittest.TestCase.subTest = subtest

        suite = unittest.defaultTestLoader.discover("tests", top_level_dir=".")
        tests = [t for t in _flatten(suite) if t.id() not in skip]
        unittest.TestSuite(tests).run(result)
        result.emit(event="finished")


# ---------------------------------------------------------------------------------------------
# The parent: server, edit, children, comparison.
# ---------------------------------------------------------------------------------------------


def toml_dump(table, prefix=""):
    """Enough TOML for hubbub.toml: scalars, lists of scalars, tables, arrays of tables."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines, nested = [], []
    for k, v in table.items():
        if isinstance(v, dict):
            nested.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            nested.append((k, v))
        else:
            lines.append(f"{k} = {value(v)}")
    for k, v in nested:
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            lines.append(f"\n[{name}]")
            lines.append(toml_dump(v, name + "."))
        else:
            for item in v:
                lines.append(f"\n[[{name}]]")
                lines.append(toml_dump(item, name + "."))
    return "\n".join(line for line in lines if line != "")


def remove_key(table, path):
    """Removes `a.b[0].c` from the parsed config; False when there is no such key."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node = table
    for part in parts[:-1]:
        if part.startswith("["):
            idx = int(part[1:-1])
            if not isinstance(node, list) or idx >= len(node):
                return False
            node = node[idx]
        else:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
    last = parts[-1] if parts else None
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    return False


# `hubbub: config key `namespaces[1]`: unknown field `delta_publish`, expected ...`
UNKNOWN_KEY = re.compile(r"config key `([^`]*)`: unknown field `([^`]*)`")


def _drain(pipe, out):
    for line in pipe:
        out.write(line)
        out.flush()


class Server:
    def __init__(self, binary, config_path, work):
        self.binary = binary
        self.config = tomllib.load(open(config_path, "rb"))
        self.work = work
        self.dropped = []  # keys left out because this build of the server rejects them
        self.proc = None
        self.addr = None

    def start(self):
        for _ in range(50):
            data_dir = os.path.join(self.work, "data")
            shutil.rmtree(data_dir, ignore_errors=True)
            self.config["data_dir"] = data_dir
            self.config["listen"] = "127.0.0.1:0"
            path = os.path.join(self.work, "hubbub.toml")
            with open(path, "w") as f:
                f.write(toml_dump(self.config) + "\n")
            log = open(os.path.join(self.work, "server.log"), "w")
            env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
            env.setdefault("RUST_LOG", "info")
            self.proc = subprocess.Popen(
                [self.binary, "serve", "--config", path],
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
            )
            line = self.proc.stdout.readline()
            m = re.search(r"hubbub listening on http://(\S+)", line)
            if m:
                self.addr = m.group(1)
                # Keep draining stdout so the server never blocks on a full pipe.
                threading.Thread(target=_drain, args=(self.proc.stdout, log), daemon=True).start()
                return
            self.proc.wait()
            log.close()
            err = open(os.path.join(self.work, "server.log")).read() + line
            m = UNKNOWN_KEY.search(err)
            if not m:
                sys.exit(f"hubbub serve did not start:\n{err}")
            # The path names the unknown key itself (serde_path_to_error), or its table.
            path, field = m.group(1), m.group(2)
            key = path if re.split(r"[.\[]", path)[-1] == field else f"{path}.{field}".lstrip(".")
            if not remove_key(self.config, key):
                sys.exit(f"hubbub rejects {key}, which is not in the config:\n{err}")
            self.dropped.append(key)
        sys.exit("hubbub serve: too many rejected config keys")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def prepare_sdk(sdk_src, work, addr):
    """Copies the unpacked sdist and points its tests at the server: the one edit."""
    dst = os.path.join(work, "sdk")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(sdk_src, dst)
    edited = 0
    tests_dir = os.path.join(dst, "tests")
    for name in sorted(os.listdir(tests_dir)):
        if not name.endswith(".py"):
            continue
        p = os.path.join(tests_dir, name)
        text = open(p).read()
        n = text.count("localhost:8000")
        if n:
            open(p, "w").write(text.replace("localhost:8000", addr))
            edited += n
    if edited == 0:
        sys.exit("no `localhost:8000` in the sdist's tests: the edit no longer applies")
    return dst, edited


class Outcomes:
    def __init__(self):
        self.results = {}  # id -> (outcome, detail)
        self.durations = {}  # test id -> seconds

    def record(self, tid, outcome, detail=""):
        # A test's own outcome does not hide a subtest's; a repeated id keeps its worst.
        old = self.results.get(tid)
        if old and old[0] != "pass" and outcome == "pass":
            return
        self.results[tid] = (outcome, detail)


def run_tests(sdk_dir, work, timeout, outcomes, log_path):
    """Runs children until every test has started once; hung tests become `timeout`."""
    events_path = os.path.join(work, "events.jsonl")
    skip_path = os.path.join(work, "started.txt")
    for p in (events_path, skip_path):
        if os.path.exists(p):
            os.remove(p)
    started = []
    log = open(log_path, "w")
    pos = 0
    while True:
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", events_path, skip_path],
            cwd=sdk_dir,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        current, current_sub, since = None, None, None
        finished = False
        while True:
            with open(events_path, "a+") as f:
                f.seek(pos)
                chunk = f.read()
            # Only whole lines: the child may be writing the next one.
            cut = chunk.rfind("\n") + 1
            pos += len(chunk[:cut].encode())
            for line in chunk[:cut].splitlines():
                ev = json.loads(line)
                kind = ev["event"]
                if kind == "start":
                    current, current_sub, since = ev["id"], None, time.monotonic()
                    started.append(ev["id"])
                    with open(skip_path, "a") as s:
                        s.write(ev["id"] + "\n")
                elif kind == "subtest":
                    current_sub = ev["id"]
                elif kind == "outcome":
                    outcomes.record(ev["id"], ev["outcome"], ev.get("detail", ""))
                elif kind == "stop":
                    if current:
                        outcomes.durations[current] = time.monotonic() - since
                    current, current_sub = None, None
                elif kind == "finished":
                    finished = True
            if finished:
                child.wait()
                return started
            exited = child.poll() is not None
            if current and time.monotonic() - since > timeout:
                blame = current_sub or current
                outcomes.record(blame, "timeout", f"no result within {timeout:g} s")
                outcomes.durations[current] = time.monotonic() - since
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                print(f"  timeout: {blame}", flush=True)
                break
            if exited:
                if not current:
                    sys.exit(f"the test runner exited ({child.returncode}) outside a test; see {log_path}")
                outcomes.record(
                    current_sub or current, "error", f"the test process died ({child.returncode})"
                )
                break
            time.sleep(0.05)


def read_known(path):
    known = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if " | " not in line:
                sys.exit(f"{path}:{n}: expected `<test id> | <reason>`")
            tid, reason = line.split(" | ", 1)
            known[tid.strip()] = reason.strip()
    return known


def first_line(detail):
    lines = [ln for ln in detail.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def compare(outcomes, known, known_path):
    failing = {t: r for t, r in outcomes.results.items() if r[0] not in ("pass", "skip")}
    unexpected = {t: r for t, r in failing.items() if t not in known}
    fixed = [t for t in known if t in outcomes.results and outcomes.results[t][0] == "pass"]
    unseen = [t for t in known if t not in outcomes.results]
    counts = {}
    for outcome, _ in outcomes.results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    print(
        "results (tests and subtests): "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f"; {len(failing) - len(unexpected)} failing as listed in {os.path.basename(known_path)}"
    )
    for t in fixed:
        print(f"NOW PASSES (remove it from {os.path.basename(known_path)}): {t}")
    for t in unseen:
        print(f"listed but not run (renamed? remove it): {t}")
    for t, (outcome, detail) in sorted(unexpected.items()):
        print(f"\nUNEXPECTED {outcome.upper()}: {t}\n{detail.rstrip()}")
    if unexpected:
        print("\nnot in the list (add with a reason, or fix):")
        for t, (outcome, detail) in sorted(unexpected.items()):
            print(f"{t} | {outcome}: {first_line(detail)}")
    return not unexpected


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", required=True, help="the hubbub binary")
    ap.add_argument("--sdk", required=True, help="the unpacked sdist (left untouched)")
    ap.add_argument("--work", required=True, help="a scratch folder (emptied)")
    ap.add_argument("--config", default=os.path.join(HERE, "hubbub.toml"))
    ap.add_argument("--known", default=os.path.join(HERE, "known-failures.txt"))
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds per test")
    args = ap.parse_args()

    args.work, args.sdk, args.server = map(os.path.abspath, (args.work, args.sdk, args.server))
    os.makedirs(args.work, exist_ok=True)
    t0 = time.monotonic()
    known = read_known(args.known)
    server = Server(args.server, args.config, args.work)
    outcomes = Outcomes()
    try:
        server.start()
        for key in server.dropped:
            outcomes.record(f"config {key}", "error", "not accepted by hubbub serve yet")
        for tid in known:
            if tid.startswith("config ") and tid[len("config ") :] not in server.dropped:
                outcomes.record(tid, "pass")
        print(f"hubbub serve on {server.addr} (log: {args.work}/server.log)", flush=True)
        sdk_dir, edited = prepare_sdk(args.sdk, args.work, server.addr)
        print(f"edit: `localhost:8000` -> `{server.addr}` in {edited} places of tests/*.py", flush=True)
        log_path = os.path.join(args.work, "tests.log")
        run_tests(sdk_dir, args.work, args.timeout, outcomes, log_path)
        alive = server.proc.poll() is None
    finally:
        server.stop()
    if not alive:
        outcomes.record("hubbub serve", "error", f"the server exited during the run ({server.proc.returncode})")
    with open(os.path.join(args.work, "durations.json"), "w") as f:
        json.dump(outcomes.durations, f, indent=1)
    slow = sorted(outcomes.durations.items(), key=lambda kv: -kv[1])[:3]
    print(
        f"ran {len(outcomes.durations)} tests in {time.monotonic() - t0:.0f} s; slowest: "
        + ", ".join(f"{t.rsplit('.', 1)[-1]} {d:.1f} s" for t, d in slow)
        + f" (SDK log: {args.work}/tests.log)"
    )
    ok = compare(outcomes, known, args.known)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
