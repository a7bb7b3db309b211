# rStar-style executor baseline for `rstar-gpu bench exec`: what the official code does
# (rstar_deepthink agents/tree.py + tools/python_tool.py). A persistent pool of worker processes;
# each step's program is the concatenated code of all its ancestors plus its own, run from
# scratch in-process with `exec` in the worker's module globals (state shared inside a worker,
# no sandbox), stdout captured, a signal timeout around it. Pool start-up is not timed.
#
# With "mode": "incremental" it is instead the roofline of any incremental executor: the same
# warm workers, each path pinned to one worker and kept in its own namespace, each step running
# only its own code (no sandbox, no fork, no isolation between paths, no limits).
import concurrent.futures as cf
import contextlib
import io
import json
import signal
import sys
import time


def init():
    # A long-running pool has imported and used sympy long before; so do the workers here.
    import math  # noqa: F401
    try:
        import sympy
        x = sympy.Symbol("x")
        sympy.solve(x ** 2 - 3 * x + 2, x)
        sympy.simplify((x ** 2 - 1) / (x - 1))
    except ImportError:
        pass


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout("timed out")


def run(program):
    buf = io.StringIO()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(30)
    try:
        with contextlib.redirect_stdout(buf):
            exec(program, globals())
        return buf.getvalue()
    except BaseException as e:  # noqa: BLE001
        return "%s: %s" % (type(e).__name__, e)
    finally:
        signal.alarm(0)


def run_in(program, ns):
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(program, ns)
        return buf.getvalue()
    except BaseException as e:  # noqa: BLE001
        return "%s: %s" % (type(e).__name__, e)


def pinned_worker(conn):
    init()
    spaces = {}
    while True:
        batch = conn.recv()
        if batch is None:
            return
        conn.send([run_in(code, spaces.setdefault(path, {"__name__": "__main__"}))
                   for path, code in batch])


def incremental(req):
    import multiprocessing as mp
    workers = int(req["workers"])
    conns, procs = [], []
    for _ in range(workers):
        a, b = mp.Pipe()
        p = mp.Process(target=pinned_worker, args=(b,), daemon=True)
        p.start()
        conns.append(a)
        procs.append(p)
    for c in conns:  # every worker started and warm
        c.send([(-1, "pass")])
    for c in conns:
        c.recv()
    outputs = []
    t0 = time.perf_counter()
    for rnd in req["rounds"]:
        mine = [[(p, code) for p, code in enumerate(rnd) if p % workers == w]
                for w in range(workers)]
        for c, batch in zip(conns, mine):
            c.send(batch)
        got = [iter(c.recv()) for c in conns]
        outputs.append([next(got[p % workers]) for p in range(len(rnd))])
    seconds = time.perf_counter() - t0
    for c in conns:
        c.send(None)
    for p in procs:
        p.join()
    return {"seconds": seconds, "outputs": outputs}


def main():
    req = json.load(sys.stdin)
    if req.get("mode") == "incremental":
        json.dump(incremental(req), sys.stdout)
        return
    workers = int(req["workers"])
    with cf.ProcessPoolExecutor(max_workers=workers, initializer=init) as pool:
        list(pool.map(run, ["pass"] * workers * 4))  # every worker started and warm
        outputs = []
        t0 = time.perf_counter()
        for rnd in req["rounds"]:
            outputs.append(list(pool.map(run, rnd)))
        seconds = time.perf_counter() - t0
    json.dump({"seconds": seconds, "outputs": outputs}, sys.stdout)


if __name__ == "__main__":
    main()
