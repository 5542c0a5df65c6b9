#!/usr/bin/env python3
"""HTTP benchmark of `POST /labelling/listing` against `POST /labelling/img`:
speed, memory and fairness of the listing endpoint on a real `photolabel
serve`, with generated 1440x960 photos.

  cargo build --release && python3 tools/listing_http_bench.py all

Subcommands (each starts its own fresh server and stops it at the end):

  speed     Warm-up with 3 single calls, then --rounds rounds (default 3),
            their order rotated each round against machine noise, of:
            (a) 40 single calls one after another over one keep-alive
                connection;
            (b) one listing of the same 40 photos;
            (c) the 40 single calls from 2 concurrent clients, each on its
                own connection (what a pipelining client would do).
            Per round and median: seconds, photos/s, and the ratio
            listing / sequential singles. Target: ratio <= 1.1.
  memory    Warm-up with 2 single calls, then one 60-photo listing. Reads
            VmRSS and VmHWM of the server from /proc/PID/status before and
            after. Target: the listing raises the peak RSS by at most 100 MB
            over the idle server.
  fairness  --singles (default 100) sequential single calls on an idle
            server, then the same number again while --listings-concurrent
            (default 2) clients send 20-photo listings back to back.
            p50/p95/p99/max latency of both, 503s among the singles (counted
            as failures, never retried) and the listings' photos/s.
  all       The three in turn.

Options: --bin PATH (default target/release/photolabel of this repo), --port
(default: a free port), --work DIR (default /tmp/listing-http-bench; only its
photos/ and servers/ subfolders are wiped), --json FILE (every figure),
--rounds, --singles, --listings-concurrent.

Photos are drawn deterministically from /work/shared/data/labels.csv
(houses_dataset, zind_empty_home, vn_listings_dev), scaled with bicubic to
fill 1440x960, centre-cropped and saved as JPEG quality 90 under --work.
Each server's stderr goes to --work/servers/<subcommand>/server.log.
Standard library only, plus Pillow. A study tool: tests never run it; a
missed target prints MISS and still exits 0.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = ROOT / "target" / "release" / "photolabel"
DEFAULT_WORK = Path("/tmp/listing-http-bench")
DATA = Path("/work/shared/data")
SOURCES = ("houses_dataset", "zind_empty_home", "vn_listings_dev")

WIDTH, HEIGHT, QUALITY = 1440, 960, 90
PHOTO_COUNT = 60  # the most any subcommand sends at once (memory's listing)
SPEED_PHOTOS = 40
FAIRNESS_LISTING_PHOTOS = 20

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 300.0
RETRY_PAUSE_S = 0.05
# Time the background listings get to upload and fill the model queue
# before the contended singles start, so that none of them runs on an idle
# server by accident.
CONTENTION_LEAD_S = 1.0
RSS_SAMPLE_S = 0.01

RATIO_TARGET = 1.1
MEMORY_TARGET_MB = 100.0


# --------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------

def pick_sources(n: int) -> list[Path]:
    """n photos, spread evenly over each source's sorted paths and taken in
    turn from the three sources, so that every run sends the same mix of
    rooms and facades whatever the order of labels.csv."""
    with open(DATA / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_source = [sorted(DATA / r["path"] for r in rows if r["source"] == s) for s in SOURCES]
    wanted = [n // len(SOURCES) + (i < n % len(SOURCES)) for i in range(len(SOURCES))]
    picked = []
    for paths, k in zip(per_source, wanted):
        if len(paths) < k:
            raise SystemExit(f"labels.csv has {len(paths)} photos of a source, {k} needed")
        picked.append([paths[i * len(paths) // k] for i in range(k)])
    # Round-robin: any prefix (the 40 of speed, the 20s of fairness) mixes
    # all three sources.
    return [group[i] for i in range(max(wanted)) for group in picked if i < len(group)]


def fill_frame(image: Image.Image) -> Image.Image:
    """Scale to cover WIDTHxHEIGHT, then crop the centre: every photo has
    exactly the size of a typical listing upload."""
    w, h = image.size
    scale = max(WIDTH / w, HEIGHT / h)
    sw, sh = max(WIDTH, round(w * scale)), max(HEIGHT, round(h * scale))
    image = image.resize((sw, sh), Image.BICUBIC)
    x, y = (sw - WIDTH) // 2, (sh - HEIGHT) // 2
    return image.crop((x, y, x + WIDTH, y + HEIGHT))


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes


def make_photos(folder: Path, n: int) -> list[Photo]:
    folder.mkdir(parents=True)
    photos = []
    for i, source in enumerate(pick_sources(n)):
        with Image.open(source) as image:
            frame = fill_frame(image.convert("RGB"))
        path = folder / f"{i:03d}-{source.stem}.jpg"
        frame.save(path, "JPEG", quality=QUALITY)
        photos.append(Photo(path.name, path.read_bytes()))
    return photos


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

def multipart(photos: list[Photo]) -> tuple[str, bytes]:
    """A multipart/form-data body with one `image` file field per photo:
    one photo for /labelling/img, many for /labelling/listing."""
    boundary = f"bench-{uuid.uuid4().hex}"
    parts = []
    for photo in photos:
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="image"; filename="{photo.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        )
        parts += [head.encode(), photo.data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


@dataclass(frozen=True)
class Body:
    """A prepared request body, built before any clock starts."""
    content_type: str
    data: bytes
    photos: int

    @classmethod
    def of(cls, photos: list[Photo]) -> "Body":
        content_type, data = multipart(photos)
        return cls(content_type, data, len(photos))


class Client:
    """One keep-alive connection. http.client reconnects by itself when the
    server closes it, so a long run never needs more than this."""

    def __init__(self, port: int, key: str):
        self.conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        self.key = key

    def request(self, method: str, path: str, body: Body | None = None) -> tuple[int, bytes]:
        headers = {"x-api-key": self.key}
        if body is not None:
            headers["Content-Type"] = body.content_type
        self.conn.request(method, path, body=body.data if body else None, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.read()

    def single(self, body: Body) -> tuple[int, float]:
        """One /labelling/img call: its status and seconds."""
        start = time.perf_counter()
        status, data = self.request("POST", "/labelling/img", body)
        elapsed = time.perf_counter() - start
        if status == 200 and "Output" not in json.loads(data):
            raise RuntimeError(f"/labelling/img answered 200 without Output: {data[:200]!r}")
        return status, elapsed

    def single_retrying(self, body: Body) -> tuple[float, int]:
        """A single call that must succeed: retries 503 (queue full), as the
        contract allows. Returns seconds (retries included) and retries."""
        start, retries = time.perf_counter(), 0
        while True:
            status, _ = self.single(body)
            if status == 200:
                return time.perf_counter() - start, retries
            if status != 503:
                raise RuntimeError(f"/labelling/img answered {status}")
            retries += 1
            time.sleep(RETRY_PAUSE_S)

    def listing(self, body: Body) -> tuple[int, float, dict | None]:
        """One /labelling/listing call: status, seconds and the parsed answer
        (None unless 200)."""
        start = time.perf_counter()
        status, data = self.request("POST", "/labelling/listing", body)
        elapsed = time.perf_counter() - start
        return status, elapsed, json.loads(data) if status == 200 else None

    def close(self) -> None:
        self.conn.close()


def labelled(report: dict) -> int:
    """Photos of a listing answer that got a label rather than an error."""
    return sum("error" not in p for p in report["photos"])


def listing_ok(client: Client, body: Body) -> float:
    """A listing that must succeed with every photo labelled; its seconds."""
    status, elapsed, report = client.listing(body)
    if status != 200:
        raise RuntimeError(f"/labelling/listing answered {status}")
    if len(report["photos"]) != body.photos or labelled(report) != body.photos:
        errors = [p.get("error") for p in report["photos"] if "error" in p]
        raise RuntimeError(f"listing of {body.photos}: {labelled(report)} labelled, errors {errors[:3]}")
    return elapsed


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """A fresh `photolabel serve` with its own data dir and one API key.
    Use as a context manager: the process is always stopped on exit."""

    def __init__(self, binary: Path, folder: Path, port: int | None):
        self.binary, self.folder = binary, folder
        self.port = port or free_port()
        self.log_path = folder / "server.log"
        self.process: subprocess.Popen | None = None
        self.key = ""
        self.health: dict = {}

    def __enter__(self) -> "Server":
        data_dir = self.folder / "data"
        data_dir.mkdir(parents=True)
        self.key = self.create_key(data_dir)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "serve", "--bind", f"{HOST}:{self.port}", "--data-dir", str(data_dir)],
                stdout=log, stderr=subprocess.STDOUT,
                # The log is a file: no colour escapes in it.
                env={**os.environ, "NO_COLOR": "1"},
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def create_key(self, data_dir: Path) -> str:
        done = subprocess.run(
            [str(self.binary), "keys", "create", "--name", "bench", "--data-dir", str(data_dir)],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        if not lines:
            raise RuntimeError(f"keys create printed no key; stderr: {done.stderr[-500:]}")
        return lines[-1]

    def wait_ready(self) -> None:
        """Polls /health until 200: the model loads after the port opens."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode} while starting")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                conn.request("GET", "/health")
                response = conn.getresponse()
                body = json.loads(response.read() or b"{}")
                conn.close()
                if response.status == 200:
                    self.health = body
                    return
                if body.get("status") == "failed":
                    raise RuntimeError("the model failed to load")
            except (OSError, http.client.HTTPException, ValueError):
                pass  # not listening yet
            time.sleep(0.2)
        raise RuntimeError(f"/health not 200 within {READY_TIMEOUT_S:.0f} s")

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self) -> Client:
        return Client(self.port, self.key)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGTERM lets in-flight requests finish; a hung server still goes.
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def proc_status_kb(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, …)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[name] = int(parts[0])
    return fields


def reset_hwm(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux clear_refs "5"). Without it a
    listing peak below the model-loading peak would not show at all."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Polls VmRSS: a cross-check of VmHWM that needs no kernel support."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb = pid, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_kb = max(self.peak_kb, proc_status_kb(self.pid)["VmRSS"])
            self.done.wait(RSS_SAMPLE_S)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak_kb


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 0.50),
        "p95_ms": percentile(ms, 0.95),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
    }


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for j, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def machine(binary: Path) -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    version = subprocess.run([str(binary), "--version"], check=True, stdout=subprocess.PIPE, text=True).stdout
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "photolabel": version.strip(),
        "python": sys.version.split()[0],
    }


# --------------------------------------------------------------------------
# speed
# --------------------------------------------------------------------------

def singles_sequential(server: Server, bodies: list[Body]) -> tuple[float, int]:
    """All bodies one after another on one connection: seconds, retries."""
    client = server.client()
    try:
        start, retries = time.perf_counter(), 0
        for body in bodies:
            retries += client.single_retrying(body)[1]
        return time.perf_counter() - start, retries
    finally:
        client.close()


def singles_concurrent(server: Server, bodies: list[Body], workers: int) -> tuple[float, int]:
    """All bodies from `workers` clients, each its own connection, taking
    the next photo as soon as their previous call returns."""
    todo: queue.Queue[Body] = queue.Queue()
    for body in bodies:
        todo.put(body)
    clients = [server.client() for _ in range(workers)]
    retries, errors, lock = [0], [], threading.Lock()

    def work(client: Client) -> None:
        try:
            while True:
                try:
                    body = todo.get_nowait()
                except queue.Empty:
                    return
                n = client.single_retrying(body)[1]
                with lock:
                    retries[0] += n
        except Exception as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in clients:
        c.close()
    if errors:
        raise errors[0]
    return elapsed, retries[0]


def listing_once(server: Server, body: Body) -> tuple[float, int]:
    """One listing on a fresh connection: seconds, and no retries (a listing
    that fails is an error, not a figure)."""
    client = server.client()
    try:
        return listing_ok(client, body), 0
    finally:
        client.close()


# name -> how that variant sends the 40 photos: fn(server, single bodies,
# listing body) -> (seconds, 503 retries).
SPEED_VARIANTS = {
    "singles": lambda server, bodies, listing: singles_sequential(server, bodies),
    "listing": lambda server, bodies, listing: listing_once(server, listing),
    "singles_2clients": lambda server, bodies, listing: singles_concurrent(server, bodies, 2),
}


def run_speed(args, photos: list[Photo], folder: Path) -> dict:
    chosen = photos[:SPEED_PHOTOS]
    bodies = [Body.of([p]) for p in chosen]
    listing = Body.of(chosen)
    n = len(chosen)
    names = list(SPEED_VARIANTS)
    rounds = []
    with Server(args.bin, folder, args.port) as server:
        print(f"speed: server pid {server.pid}, {server.health}")
        singles_sequential(server, bodies[:3])  # warm-up
        for r in range(args.rounds):
            # Rotate which variant goes first, so that a slow spell of the
            # machine does not always land on the same one.
            order = names[r % len(names):] + names[:r % len(names)]
            result = {"order": order}
            for name in order:
                seconds, retries = SPEED_VARIANTS[name](server, bodies, listing)
                result[name] = {"seconds": seconds, "photos_per_s": n / seconds, "retries_503": retries}
                print(f"  round {r + 1} {name}: {seconds:.2f} s")
            result["ratio_listing_singles"] = result["listing"]["seconds"] / result["singles"]["seconds"]
            result["ratio_listing_singles_2clients"] = (
                result["listing"]["seconds"] / result["singles_2clients"]["seconds"])
            rounds.append(result)

    median = {name: statistics.median(r[name]["seconds"] for r in rounds) for name in names}
    summary = {
        "photos": n,
        "rounds": rounds,
        "median_seconds": median,
        "median_photos_per_s": {k: n / v for k, v in median.items()},
        "median_ratio_listing_singles": statistics.median(r["ratio_listing_singles"] for r in rounds),
        "median_ratio_listing_singles_2clients": statistics.median(
            r["ratio_listing_singles_2clients"] for r in rounds),
        "retries_503": sum(r[name]["retries_503"] for r in rounds for name in names),
        "target_ratio": RATIO_TARGET,
    }
    print_speed(summary)
    return summary


def print_speed(s: dict) -> None:
    rows = []
    for i, r in enumerate(s["rounds"], 1):
        rows.append([f"round {i}",
                     r["singles"]["seconds"], r["singles"]["photos_per_s"],
                     r["listing"]["seconds"], r["listing"]["photos_per_s"],
                     r["singles_2clients"]["seconds"], r["singles_2clients"]["photos_per_s"],
                     r["ratio_listing_singles"], r["ratio_listing_singles_2clients"]])
    m, mp = s["median_seconds"], s["median_photos_per_s"]
    rows.append(["median", m["singles"], mp["singles"], m["listing"], mp["listing"],
                 m["singles_2clients"], mp["singles_2clients"],
                 s["median_ratio_listing_singles"], s["median_ratio_listing_singles_2clients"]])
    print_table(
        f"speed: {s['photos']} photos of {WIDTH}x{HEIGHT} (seconds, photos/s; ratio = listing / singles)",
        ["", "singles s", "photo/s", "listing s", "photo/s", "2 clients s", "photo/s",
         "listing/singles", "listing/2 clients"],
        rows,
    )
    ratio = s["median_ratio_listing_singles"]
    print(f"  503 retries: {s['retries_503']}")
    print(f"  {verdict(ratio <= RATIO_TARGET)} median listing / sequential singles {ratio:.3f} "
          f"(target <= {RATIO_TARGET})")


# --------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------

def mb(kb: int) -> float:
    """/proc's kB (KiB) in MB (10^6 bytes), the unit of the target."""
    return kb * 1024 / 1e6


def run_memory(args, photos: list[Photo], folder: Path) -> dict:
    listing = Body.of(photos[:PHOTO_COUNT])
    with Server(args.bin, folder, args.port) as server:
        print(f"memory: server pid {server.pid}, {server.health}")
        singles_sequential(server, [Body.of([p]) for p in photos[:2]])  # warm-up
        before = proc_status_kb(server.pid)
        was_reset = reset_hwm(server.pid)
        sampler = RssSampler(server.pid)
        sampler.start()
        try:
            seconds, _ = listing_once(server, listing)
        finally:
            sampled_kb = sampler.stop()
        after = proc_status_kb(server.pid)

    idle, hwm_before = mb(before["VmRSS"]), mb(before["VmHWM"])
    # The kernel updates VmHWM lazily (memory an allocator hands back with
    # madvise can escape it), so the sampled RSS may be higher: take both.
    peak = max(mb(after["VmHWM"]), mb(sampled_kb))
    summary = {
        "photos": listing.photos,
        "body_mb": len(listing.data) / 1e6,
        "listing_seconds": seconds,
        "idle_rss_mb": idle,
        "hwm_before_mb": hwm_before,
        "hwm_reset": was_reset,
        "hwm_after_mb": mb(after["VmHWM"]),
        "sampled_peak_rss_mb": mb(sampled_kb),
        "peak_mb": peak,
        "rss_after_mb": mb(after["VmRSS"]),
        "peak_minus_idle_mb": peak - idle,
        "peak_minus_hwm_before_mb": peak - hwm_before,
        "target_mb": MEMORY_TARGET_MB,
    }
    print_memory(summary)
    return summary


def print_memory(s: dict) -> None:
    hwm = "VmHWM after (reset to idle RSS before the listing)" if s["hwm_reset"] else "VmHWM after (not reset)"
    print_table(
        f"memory: one listing of {s['photos']} photos of {WIDTH}x{HEIGHT}, body {s['body_mb']:.1f} MB, "
        f"{s['listing_seconds']:.1f} s (MB = 10^6 bytes)",
        ["", "MB"],
        [["idle VmRSS (after warm-up)", s["idle_rss_mb"]],
         ["VmHWM before (model load, warm-up)", s["hwm_before_mb"]],
         [hwm, s["hwm_after_mb"]],
         [f"peak sampled VmRSS (every {RSS_SAMPLE_S * 1000:.0f} ms)", s["sampled_peak_rss_mb"]],
         ["peak = max of the two above", s["peak_mb"]],
         ["VmRSS after", s["rss_after_mb"]],
         ["peak - idle RSS", s["peak_minus_idle_mb"]],
         ["peak - VmHWM before", s["peak_minus_hwm_before_mb"]]],
    )
    rise = s["peak_minus_idle_mb"]
    print(f"  {verdict(rise <= s['target_mb'])} listing raises the peak RSS by {rise:.1f} MB over the idle "
          f"server (target <= {s['target_mb']:.0f} MB)")


# --------------------------------------------------------------------------
# fairness
# --------------------------------------------------------------------------

def timed_singles(server: Server, bodies: list[Body], n: int) -> tuple[list[float], dict[int, int]]:
    """n sequential single calls, cycling through bodies, never retried:
    the latencies of the 200s and a count of every other status."""
    client = server.client()
    latencies, failures = [], {}
    try:
        for i in range(n):
            status, seconds = client.single(bodies[i % len(bodies)])
            if status == 200:
                latencies.append(seconds)
            else:
                failures[status] = failures.get(status, 0) + 1
    finally:
        client.close()
    return latencies, failures


@dataclass
class ListingLoad:
    """Background clients sending listings back to back until stopped."""
    server: Server
    bodies: list[Body]
    clients: int
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    listings: int = 0
    photos_labelled: int = 0
    failures: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    threads: list = field(default_factory=list)
    started: float = 0.0

    def start(self) -> None:
        self.threads = [threading.Thread(target=self.work, args=(i,), daemon=True) for i in range(self.clients)]
        self.started = time.perf_counter()
        for t in self.threads:
            t.start()

    def work(self, index: int) -> None:
        client = self.server.client()
        try:
            # Each client starts on another set of photos and moves on each
            # listing, so that no two listings in flight are the same.
            j = index
            while not self.stop_event.is_set():
                status, _, report = client.listing(self.bodies[j % len(self.bodies)])
                j += self.clients
                with self.lock:
                    if status == 200:
                        self.listings += 1
                        self.photos_labelled += labelled(report)
                    else:
                        self.failures[status] = self.failures.get(status, 0) + 1
        except Exception as e:  # surfaced by stop()
            self.errors.append(e)
        finally:
            client.close()

    def stop(self) -> float:
        """Lets each in-flight listing finish; the load's seconds."""
        self.stop_event.set()
        for t in self.threads:
            t.join()
        if self.errors:
            raise self.errors[0]
        return time.perf_counter() - self.started


def run_fairness(args, photos: list[Photo], folder: Path) -> dict:
    single_bodies = [Body.of([p]) for p in photos]
    k = FAIRNESS_LISTING_PHOTOS
    listing_bodies = [Body.of(photos[i:i + k]) for i in range(0, len(photos) - k + 1, k)]
    with Server(args.bin, folder, args.port) as server:
        print(f"fairness: server pid {server.pid}, {server.health}")
        timed_singles(server, single_bodies, 2)  # warm-up
        idle, idle_failures = timed_singles(server, single_bodies, args.singles)
        print(f"  idle singles done: p50 {percentile(idle, 0.5) * 1000:.0f} ms")
        load = ListingLoad(server, listing_bodies, args.listings_concurrent)
        load.start()
        try:
            time.sleep(CONTENTION_LEAD_S)
            busy, busy_failures = timed_singles(server, single_bodies, args.singles)
        finally:
            load_seconds = load.stop()

    summary = {
        "singles": args.singles,
        "listing_clients": args.listings_concurrent,
        "listing_photos": k,
        "idle": latency_summary(idle),
        "idle_failures": idle_failures,
        "with_listings": latency_summary(busy),
        "with_listings_failures": busy_failures,
        "failed_503": busy_failures.get(503, 0),
        "listings_done": load.listings,
        "listing_failures": load.failures,
        "listing_photos_labelled": load.photos_labelled,
        "listing_seconds": load_seconds,
        "listing_photos_per_s": load.photos_labelled / load_seconds,
    }
    print_fairness(summary)
    return summary


def print_fairness(s: dict) -> None:
    rows = []
    for name, key, fails in (("idle server", "idle", "idle_failures"),
                             (f"{s['listing_clients']} listing clients", "with_listings", "with_listings_failures")):
        q = s[key]
        failed = sum(s[fails].values())
        if q["n"]:
            rows.append([name, q["n"], q["p50_ms"], q["p95_ms"], q["p99_ms"], q["max_ms"], failed])
        else:
            rows.append([name, 0, "-", "-", "-", "-", failed])
    print_table(f"fairness: {s['singles']} sequential single calls (ms)",
                ["", "ok", "p50", "p95", "p99", "max", "failed"], rows)
    print(f"  503s among the singles with listings running: {s['failed_503']} "
          f"(other failures: { {k: v for k, v in s['with_listings_failures'].items() if k != 503} or 'none'})")
    print(f"  listings: {s['listings_done']} of {s['listing_photos']} photos in {s['listing_seconds']:.1f} s "
          f"(lead-in, singles and the in-flight tail) -> {s['listing_photos_per_s']:.2f} photos/s "
          f"(failed listings: {s['listing_failures'] or 'none'})")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

COMMANDS = {"speed": run_speed, "memory": run_memory, "fairness": run_fairness}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=[*COMMANDS, "all"])
    parser.add_argument("--bin", type=Path, default=DEFAULT_BIN)
    parser.add_argument("--port", type=int, default=None, help="default: a free port per server")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=100)
    parser.add_argument("--listings-concurrent", type=int, default=2)
    args = parser.parse_args()
    if min(args.rounds, args.singles, args.listings_concurrent) < 1:
        parser.error("--rounds, --singles and --listings-concurrent must be at least 1")
    return args


def fresh(folder: Path) -> Path:
    """Wipes one of the work dir's own subfolders, never the work dir."""
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def report_failure(name: str, log: Path) -> None:
    print(f"\n{name} failed; server log: {log}", file=sys.stderr)
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines()[-5:]:
            print(f"  | {line}", file=sys.stderr)


def main() -> int:
    args = parse_args()
    # A SIGTERM (a CI timeout, kill) must still run the finally blocks that
    # stop the server, which only an exception does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.bin.is_file():
        print(f"error: no binary at {args.bin}; run cargo build --release first", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    servers = fresh(args.work / "servers")

    figures = {"machine": machine(args.bin)}
    m = figures["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; {m['photolabel']}; Python {m['python']}")

    start = time.perf_counter()
    photos = make_photos(fresh(args.work / "photos"), PHOTO_COUNT)
    print(f"photos: {len(photos)} of {WIDTH}x{HEIGHT} q{QUALITY} in {args.work / 'photos'} "
          f"({sum(len(p.data) for p in photos) / len(photos) / 1e3:.0f} kB on average, "
          f"{time.perf_counter() - start:.1f} s)")

    names = list(COMMANDS) if args.command == "all" else [args.command]
    for name in names:
        folder = servers / name
        try:
            started = time.perf_counter()
            figures[name] = COMMANDS[name](args, photos, folder)
            figures[name]["wall_seconds"] = time.perf_counter() - started
        except BaseException:
            report_failure(name, folder / "server.log")
            raise
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
