"""GPU restore benchmark: cold start vs checkpoint/restore of a warm LLM worker.

Run on a machine with an NVIDIA GPU, as root (CRIU, drop_caches):

    python bench/gpu_restore.py run --out bench/results

The engine is a transformers causal LM with a Qwen2 shape (hidden 2048, 24
layers, vocab 65536: about 1.7B parameters, random bf16 weights saved as
safetensors and loaded from there), decode compiled with torch.compile,
greedy decoding of a fixed 32-token prompt. Its KV cache is a pool on CUDA
virtual memory (``sidecar.kv_cache``) that it releases on quiesce through
``sidecar.hooks``.

One run measures, each after dropping the page cache:
  * cold start to first token, empty and warm inductor cache;
  * checkpoint time (CUDA lock+checkpoint, CRIU dump, source resumed);
  * artifact bytes vs the worker's GPU-resident bytes;
  * restore to first token (direct, after a parallel prefetch, and with the
    prefetch overlapped with CRIU), tokens compared with the cold start;
  * the storage floor: artifact bytes / read bandwidth of this disk, measured
    here with the same readers;
  * a 16 GiB KV cache left mapped ("plain") vs released before the dump.

The GPU step is the agent's (``agent.cuda_checkpoint.CudaCheckpointStep``).
CRIU is driven from here as a plain ``criu dump``/``criu restore`` on a host
process (``agent.criu.find`` locates the binary), because the agent's
container pipeline needs a pod or a sandbox around the worker.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import hashlib
import itertools
import json
import os
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent import loader_standby  # noqa: E402
from agent.gpu_regions import DEFAULT_GENTLE  # noqa: E402
from sidecar import hooks  # noqa: E402
from thaw.contract import (  # noqa: E402
    ENV_CONTROL_DIR,
    ENV_MODE,
    FILE_PAGES_FILE,
    GPU_REGIONS_FILE,
    GpuRegions,
    Signal,
)

PROMPT_LEN = 32
NEW_TOKENS = 32
GIB = 1 << 30


# ======================================================================================
# worker: the engine process that gets checkpointed
# ======================================================================================
def worker(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, StaticCache

    from sidecar.kv_cache import VmmPool

    out = Path(args.results)
    torch.backends.cuda.matmul.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16, device_map="cuda"
    ).eval()
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    weights = None
    if args.weights == "release":  # weights leave the snapshot, come back from the files
        from sidecar.weights import ReleasableWeights

        files = sorted(Path(args.model).glob("*.safetensors"))
        weights = ReleasableWeights(model, files, readers=16)
    pool = VmmPool(int(args.kv_gib * GIB))
    cache = StaticCache(config=cfg, max_cache_len=PROMPT_LEN + NEW_TOKENS)
    cache.early_initialization(1, cfg.num_key_value_heads, head_dim, torch.bfloat16, "cuda")
    for layer in cache.layers:  # the engine's KV lives in the VMM pool
        layer.keys = pool.tensor(tuple(layer.keys.shape), torch.bfloat16)
        layer.values = pool.tensor(tuple(layer.values.shape), torch.bfloat16)
        torch._dynamo.mark_static_address(layer.keys)
        torch._dynamo.mark_static_address(layer.values)
    torch.cuda.empty_cache()
    pool.on_remap.append(cache.reset)  # remapped memory is undefined: start clean
    if args.kv_mode == "unmap":
        pool.register_hooks()
    if weights:  # after the KV pool: its remap (first GPU work after a restore) runs while
        weights.register_hooks()  # the agent's loader may still be filling the weights

    @hooks.quiesce
    def _trim() -> None:  # fewer pages in the snapshot
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    decode = torch.compile(model.forward, dynamic=False)
    prompt = (torch.arange(PROMPT_LEN, device="cuda") * 7919 % (cfg.vocab_size - 1) + 1)[None]

    @torch.inference_mode()
    def generate() -> tuple[float, list[int], str]:
        cache.reset()
        logits = model(input_ids=prompt, past_key_values=cache, use_cache=True).logits
        tok = logits[:, -1:].argmax(-1)
        first = int(tok.item())
        t_first = time.time()
        toks = [first]
        digest = hashlib.sha256(logits[0, -1].float().cpu().numpy().tobytes())
        for _ in range(NEW_TOKENS - 1):
            logits = decode(input_ids=tok, past_key_values=cache, use_cache=True).logits
            tok = logits[:, -1:].argmax(-1)
            toks.append(int(tok.item()))
        digest.update(logits[0, -1].float().cpu().numpy().tobytes())
        return t_first, toks, digest.hexdigest()

    def serve(event: str) -> None:
        t_resumed = time.time()  # resume hooks done (weights mapped): the rest is the engine's
        t_first, toks, digest = generate()
        record = {
            "event": event,
            "t_resumed": t_resumed,
            "t_first": t_first,
            "t_done": time.time(),
            "tokens": toks,
            "logits_sha256": digest,
            "pid": os.getpid(),
            "rss_bytes": _rss(os.getpid()),
            "cuda_reserved_bytes": torch.cuda.memory_reserved(),
            "kv_pool_bytes": pool.nbytes if pool.mapped else 0,
            "weights_reload_s": weights.last_reload_s if weights else 0.0,
            "weights_source": weights.last_source if weights else "",
            "hook_timings": dict(hooks.last_timings),
            "kv_remap_timings": dict(pool.last_timings),
        }
        if event == "cold":  # what the serving engine holds on the GPU, before any quiesce
            record["gpu_bytes_serving"] = gpu_used_by(os.getpid())
        tmp = out / f".{event}.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, out / f"{event}.json")

    generate()  # warm-up: compiles the decode step
    generate()
    serve("cold")
    info = {
        "cuda_reserved_bytes": torch.cuda.memory_reserved(),
        "kv_pool_bytes": pool.nbytes,
        # files the restored engine reads on resume: a restore should prefetch them too
        "prefetch": [str(p) for p in weights.files] if weights else [],
        "released_weight_bytes": weights.bytes if weights else 0,
    }
    outcome = hooks.wait_for_checkpoint_or_restore(timeout_s=1800, info=info)
    if outcome.event == "skipped":
        return
    while True:  # serve, then offer another checkpoint when the benchmark asks ("next")
        serve(outcome.event)
        nxt = out / "next"
        while not nxt.exists():
            time.sleep(0.01)
        nxt.unlink()
        outcome = hooks.wait_for_checkpoint_or_restore(timeout_s=1800, info=info)


def _rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# ======================================================================================
# prep: build the model once
# ======================================================================================
def prep(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    small = args.small
    cfg = Qwen2Config(
        vocab_size=65536,
        hidden_size=512 if small else 2048,
        intermediate_size=1536 if small else 7936,
        num_hidden_layers=4 if small else 24,
        num_attention_heads=8 if small else 16,
        num_key_value_heads=4 if small else 8,
        max_position_embeddings=4096,
        tie_word_embeddings=False,  # a random lm_head: varied tokens from random weights
        initializer_range=0.02,
    )
    torch.manual_seed(1234)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(args.model, safe_serialization=True)
    print(json.dumps({"params": params}))


# ======================================================================================
# orchestration
# ======================================================================================
def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def gpu_used_by(pid: int) -> int:
    """Device memory NVML charges to ``pid`` (bytes), 0 if unknown."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return 0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1]) << 20
    return 0


def wait_file(path: Path, timeout: float, proc_pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc_pid is not None and not Path(f"/proc/{proc_pid}").exists():
            raise RuntimeError(f"worker {proc_pid} died before {path.name}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout}s")
        time.sleep(0.002)


def kill(pid: int, reap: bool = True) -> None:
    """SIGKILL and wait until the pid is free again (a restore needs the same pid)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists():
        if reap:  # restored workers are our children: we are a subreaper
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still exists 60s after SIGKILL")
        time.sleep(0.01)


def become_subreaper() -> None:
    """Orphans (CRIU's detached restores) get reparented to us, so we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work).resolve()
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.model = self.work / "model"
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.results: dict = {}
        become_subreaper()
        from agent import criu

        self.criu = criu.find()
        self.criu_version = criu.version(self.criu)
        self.agent: subprocess.Popen | None = None
        self.standby: loader_standby.LoaderStandby | None = None

    def running_agent(self) -> None:
        """A process standing in for the node agent, up for the whole run.

        The agent is a daemon that initialised the CUDA driver once at start
        (agent.cuda_checkpoint): the driver library and the Python modules it
        maps stay in memory when the page cache is dropped, as they do on a node.
        """
        if self.agent is None or self.agent.poll() is not None:
            code = ("import sys; from agent.cuda_checkpoint import CudaDriver; CudaDriver.get(); "
                    "import agent.gpu_regions, agent.file_pages, agent.working_set; "
                    "print('agent up', flush=True); sys.stdin.read()")  # fmt: skip
            self.agent = subprocess.Popen(
                [sys.executable, "-c", code], cwd=str(REPO), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert self.agent.stdout is not None and "agent up" in self.agent.stdout.readline()

    # --- worker processes ----------------------------------------------------------
    def start_worker(
        self, name: str, inductor: Path, mode: str | None, kv_mode: str, weights: str = "keep"
    ) -> tuple:
        control = self.work / f"control-{name}"
        results = self.work / f"results-{name}"
        for d in (control, results):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in (ENV_MODE, ENV_CONTROL_DIR)}
        env.update(
            TORCHINDUCTOR_CACHE_DIR=str(inductor),
            TORCHINDUCTOR_COMPILE_THREADS="1",  # no compile worker pool in the checkpointed tree
            TRITON_CACHE_DIR=str(inductor / "triton"),
            PYTHONUNBUFFERED="1",
            TOKENIZERS_PARALLELISM="false",
            **{ENV_CONTROL_DIR: str(control)},
        )
        if mode:
            env[ENV_MODE] = mode
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        argv = [
            sys.executable, __file__, "worker", "--model", str(self.model),
            "--results", str(results), "--kv-gib", str(self.args.kv_gib), "--kv-mode", kv_mode,
            "--weights", weights,
        ]  # fmt: skip
        t0 = time.time()
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, cwd=str(self.work),
        )  # fmt: skip
        log.close()
        return proc, t0, control, results

    def cold_start(
        self, name: str, inductor: Path, mode: str | None, kv_mode: str, weights: str = "keep"
    ) -> tuple:
        drop_caches()
        proc, t0, control, results = self.start_worker(name, inductor, mode, kv_mode, weights)
        try:
            wait_file(results / "cold.json", 900, proc.pid)
        except Exception:
            print((self.logs / f"{name}.log").read_text()[-3000:], file=sys.stderr)
            raise
        rec = json.loads((results / "cold.json").read_text())
        seconds = rec["t_first"] - t0
        print(f"[{name}] cold start to first token: {seconds:.2f}s", flush=True)
        return proc, seconds, rec, control, results

    # --- checkpoint ------------------------------------------------------------------
    def criu_opts(self) -> list[str]:
        return ["--file-locks", "--tcp-established", "--ext-unix-sk", "--link-remap",
                "--ghost-limit", "512M"]  # fmt: skip

    def checkpoint(
        self, proc, control: Path, results: Path, image: Path, storage: str, sparsify: bool = True
    ) -> dict:
        from agent import file_pages
        from agent.cuda_checkpoint import CudaCheckpointStep
        from agent.image_pages import census

        wait_file(control / Signal.READY_FOR_CHECKPOINT.value, 120, proc.pid)
        ready = json.loads((control / Signal.READY_FOR_CHECKPOINT.value).read_text())
        gpu_resident = gpu_used_by(proc.pid)
        rss = _rss(proc.pid)
        shutil.rmtree(image, ignore_errors=True)
        image.mkdir(parents=True)
        step = CudaCheckpointStep(state_dir=image if storage == "file" else None)
        t0 = time.monotonic()
        step.before_dump(proc.pid)
        t1 = time.monotonic()
        dump = subprocess.run(
            self.criu.argv("dump", "-t", str(proc.pid), "-D", str(image), "-o", "dump.log",
                           "--leave-running", *self.criu_opts()),
            capture_output=True, text=True,
        )  # fmt: skip
        t2 = time.monotonic()
        recorded = file_pages.record([proc.pid])  # the agent's FilePagesStep
        (image / FILE_PAGES_FILE).write_text(recorded.to_json())
        if dump.returncode != 0:
            step.abort()
            log = (image / "dump.log").read_text()[-4000:] if (image / "dump.log").exists() else ""
            raise RuntimeError(f"criu dump failed: {dump.stderr}\n{log}")
        step.after_dump()
        t3 = time.monotonic()
        t3_wall = time.time()
        hooks.write_signal(control, Signal.CHECKPOINT_COMPLETE, {"ok": True})
        wait_file(results / "checkpointed.json", 120, proc.pid)
        src = json.loads((results / "checkpointed.json").read_text())
        regions = control / GPU_REGIONS_FILE
        if regions.exists():  # what the agent's GpuRegionsStep copies into the snapshot
            shutil.copy(regions, image / GPU_REGIONS_FILE)
        artifact = sum(p.stat().st_size for p in artifact_files(image))
        tc = time.monotonic()
        pages = census(image).to_dict() if sparsify else {}
        pages["census_s"] = time.monotonic() - tc
        if sparsify and self.args.sparsify == "sparse":  # what the agent does after every dump
            from agent.image_pages import drop_zero_pages

            tc = time.monotonic()
            pages["dropped"] = dataclasses.asdict(drop_zero_pages(image))
            pages["drop_s"] = time.monotonic() - tc
            artifact = sum(p.stat().st_size for p in artifact_files(image))
        (image / "gpus.json").write_text(json.dumps([g.__dict__ for g in step.gpus]))
        (image / "mapped-files.json").write_text(json.dumps(mapped_files(proc.pid)))
        external = ready.get("prefetch", [])
        (image / "external.json").write_text(json.dumps(external))
        external_bytes = sum(Path(p).stat().st_size for p in external)
        res = {
            "storage": storage,
            "checkpoint_s": t3 - t0,
            "cuda_lock_checkpoint_s": t1 - t0,
            "criu_dump_s": t2 - t1,
            "cuda_resume_source_s": t3 - t2,
            "artifact_bytes": artifact,
            "external_bytes": external_bytes,
            "gpu_resident_bytes": gpu_resident,
            "gpu_bytes_serving": json.loads((results / "cold.json").read_text()).get(
                "gpu_bytes_serving", 0
            ),
            "host_rss_bytes_at_checkpoint": rss,
            "page_census": pages,
            "file_pages_bytes": recorded.bytes,
            "file_pages_cow_bytes": file_pages.total_bytes(recorded.cow),
            "file_pages_ranges": len(recorded.cow) + len(recorded.mapped),
            "worker_reported": ready,
            "source_tokens": src["tokens"],
            "source_logits_sha256": src["logits_sha256"],
            "source_resume_to_first_token_s": src["t_first"] - t3_wall,
            "gpus": [g.__dict__ for g in step.gpus],
        }
        print(
            f"checkpoint[{storage}] {res['checkpoint_s']:.2f}s (cuda {t1 - t0:.2f} "
            f"dump {t2 - t1:.2f} "
            f"resume {t3 - t2:.2f}), artifact {artifact / 1e9:.2f} GB, GPU-resident "
            f"{gpu_resident / 1e9:.2f} GB, RSS {rss / 1e9:.2f} GB; pages {pages}; touched file "
            f"pages {recorded.bytes / 1e9:.3f} GB",
            flush=True,
        )
        return res

    # --- restore ------------------------------------------------------------------------
    def restore(self, image: Path, control: Path, results: Path, how: str, verbose=False) -> dict:
        how = how.removesuffix("+v")  # +v: CRIU's debug log (the mode says what is verbose)
        from agent.cuda_checkpoint import CudaCheckpointStep
        from sidecar.prefetch import prefetch
        from thaw.contract import GpuInfo

        marks: dict = {}  # seconds from the start: when the restore's own steps got there
        for d in (control, results):  # a fresh pod: nothing left from the source
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        gpus = tuple(GpuInfo(**g) for g in json.loads((image / "gpus.json").read_text()))
        files = artifact_files(image)  # CRIU's small files first, its pages, then GPU state
        storage = "file" if any(p.name.startswith("gpu-") for p in files) else "host"
        external = [Path(p) for p in json.loads((image / "external.json").read_text())]
        pidfile = image / "restored.pid"
        pidfile.unlink(missing_ok=True)
        # LOADER, the 10th ordered knob: the agent's --loader-standby (off: a loader process
        # spawned per restore; on: one waiting with the driver up; contexts: and its context)
        knob = (how.partition("@")[2].split(":") + [""] * 10)[9] or loader_standby.DEFAULT_MODE
        self.close_standby()  # one a failed restore left
        standby = None
        if how.startswith("ordered") and knob != "off":
            # started before the caches are dropped: a running agent's standby is long up
            standby = loader_standby.LoaderStandby.for_mode(knob)
            self.standby = standby
            standby.start()
            marks["standby"] = standby.wait_ready()
        drop_caches()
        if "criuwarm" in how:  # CRIU's own files kept in memory by the agent
            prefetch(criu_files(self.criu), readers=4)
        if how.startswith(("loader", "ordered")):
            # the agent is a running daemon: its own code is in the page cache, the worker's not
            self.running_agent()
            subprocess.run([sys.executable, "-c", "import agent.gpu_regions"], cwd=str(REPO))
        io = [disk_reads()]
        t0 = time.time()
        m0 = time.monotonic()
        timeline = DiskTimeline(step=0.01)  # 10 ms: the first 0.2 s's ramp shows
        working: dict = {}
        prime = None
        pre = None
        fetcher = None
        if how == "prefetch":  # the restore init step: everything into the page cache first
            pre = prefetch(files + external, readers=self.args.readers)
        elif how == "overlap":  # CRIU reads its images; the weights' files stream in meanwhile
            fetcher = threading.Thread(
                target=prefetch, args=(external or files,), kwargs={"readers": self.args.readers}
            )
            fetcher.start()
        elif how == "trickle":  # the weights stream in with few readers, leaving CRIU the disk
            fetcher = threading.Thread(
                target=prefetch, args=(external or files,), kwargs={"readers": 2}
            )
            fetcher.start()
        elif how == "stream":  # one ordered stream: CRIU's images (it reads behind), then weights
            fetcher = threading.Thread(
                target=prefetch, args=(files + external,), kwargs={"readers": 4}
            )
            fetcher.start()
            warm = threading.Thread(target=warm_metadata, args=(image,))
            warm.start()
        loader = None
        criu_running: int | None = None  # the loader reads gently until this closes
        loader_stats = self.work / "loader-stats.json"
        gentle = gentle_readers = ""
        io_mode = "direct"
        first: list[str] = []
        if how.startswith("ordered"):  # one reader pool in priority order, nothing held back:
            # CRIU's small images, the file pages it and the resumed process fault in, CRIU's
            # pages, then the weights (from the page cache onto the GPU)
            from agent import file_pages, gpu_regions, steps, working_set

            # ordered@READERS:CHUNK_MIB[:HINT_MIB[:PRIME[:GENTLE[:IO[:CACHED_MIB[:DEPTH_MIB
            # [:DIRECT]]]]]]]:
            # the defaults are the agent's; PRIME: what the agent asks the kernel for at the
            # start, "all" (the whole order, worker paths too: the agent now) or MiB, with "h"
            # host paths only (the agent before: 512h); GENTLE: readers in flight until CRIU is
            # done; IO: direct or buffered for the regions; CACHED_MIB: weights asked for after
            # the order and read from the page cache ("all": every byte); DEPTH_MIB: the most
            # the agent's stream has asked for and not yet read (0: no bound); DIRECT: the weights
            # past CACHED_MIB in one sequential stream of this many O_DIRECT reads (0: the pool),
            # behind the read list, or with "n" (8n) beside it from the start; LOADER: above
            knobs = (how.partition("@")[2] or "").split(":")
            (readers, chunk_mib, hint_mib, prime_knob, gentle_readers, io_mode, cached_knob,
             depth_mib, direct_inflight) = [
                knobs[i] if len(knobs) > i and knobs[i] else str(default)
                for i, default in enumerate((steps.RESTORE_READERS, steps.RESTORE_CHUNK >> 20,
                                             steps.RESTORE_HINT >> 20, "all",
                                             steps.RESTORE_READERS_BESIDE_CRIU, "direct",
                                             steps.RESTORE_CACHED >> 20,
                                             f"{steps.RESTORE_DEPTH >> 20}+"
                                             f"{steps.RESTORE_WEIGHTS_DEPTH >> 20}",
                                             steps.RESTORE_DIRECT_INFLIGHT))
            ]  # fmt: skip
            # DEPTH_MIB: one bound, or ORDER+WEIGHTS (64+256): the weights' part its own
            depth_order, _, depth_weights = depth_mib.partition("+")
            depth = (int(depth_order) << 20) or None
            weights_depth = (int(depth_weights or depth_order) << 20) or None
            # ordered: the working set learned by earlier restores (agent.working_set) when
            # there is one; ordered-recorded: all the dump recorded; -nolibs: CRIU's images
            learned = None if how.startswith("ordered-recorded") else working_set.load(image)
            reads = file_pages.restore_reads(
                image, int(chunk_mib) << 20, images=image, learned=learned
            )
            working = working_set.describe(learned)
            if how.startswith("ordered-nolibs"):
                reads = [r for r in reads if not r.in_root]
            spec = GpuRegions.from_json((image / GPU_REGIONS_FILE).read_bytes())
            cached_bytes = 1 << 40 if cached_knob == "all" else int(cached_knob) << 20
            cached = gpu_regions.cached_ranges(spec, cached_bytes, int(chunk_mib) << 20)
            marks["list_s"] = time.monotonic() - m0
            if prime_knob == "all":  # as the agent: the bench's worker root is the host's
                prime_args = None
            elif prime_knob.endswith("h"):
                prime_args = (reads, int(prime_knob[:-1]) << 20, None, depth)
            else:
                prime_args = (reads + cached, int(prime_knob) << 20, Path("/"), depth)

            def stream() -> None:  # the agent's stream, started once the loader is spawned
                if prime_args is None:
                    asked = file_pages.advise_parts(
                        [(reads, depth), (cached, weights_depth)], Path("/")
                    )
                else:
                    asked = file_pages.advise(*prime_args)
                marks["stream_asked_s"] = (asked, time.monotonic() - m0)

            prime = None if "noprime" in how else threading.Thread(target=stream, daemon=True)
            (self.work / "first.json").write_bytes(file_pages.to_json(reads))
            first = ["--first", str(self.work / "first.json"), "--hint-mib", hint_mib,
                     "--cached-mib", str(cached_bytes >> 20),
                     "--direct-inflight", direct_inflight.rstrip("n"),
                     *(["--direct-now"] if direct_inflight.endswith("n") else [])]  # fmt: skip
            marks["list_written_s"] = time.monotonic() - m0
        if how.startswith(("loader", "ordered")):  # the agent's GpuRegionsStep: weights refilled
            # loader: gentle while CRIU runs (the earlier default), loader@R:G: gentle with R
            # readers paced to G GB/s, loader-full: never gentle, loader-buffered: page cache
            gentle = (how.partition("@")[2] if not first else gentle_readers) or (
                DEFAULT_GENTLE if how.split("@")[0] in ("loader", "loader-pf") else ""
            )
            loader_stats.unlink(missing_ok=True)
            done_r, criu_running = os.pipe()  # as the agent does: closed when CRIU is done
            loader = loader_standby.spawn(
                ["--spec", str(image / GPU_REGIONS_FILE),
                 "--control", str(control), "--stats", str(loader_stats),
                 *(["--readers", readers, "--chunk-mib", chunk_mib] if first else
                   ["--readers", str(self.args.readers)]),
                 *(["--gentle", gentle] if gentle else []), *first, "--trace",
                 "--gentle-until-eof", loader_standby.FD_TOKEN % 0,
                 *(["--buffered"] if how == "loader-buffered" or io_mode == "buffered" else [])],
                [done_r], standby,
            )  # fmt: skip
            os.close(done_r)
        if how.startswith("loader-pf"):  # + the restore init step's prefetch of CRIU's images
            fetcher = threading.Thread(target=prefetch, args=(files,), kwargs={"readers": 8})
            fetcher.start()
        marks["loader_spawned_s"] = time.monotonic() - m0
        if prime is not None:
            prime.start()
        log_name = f"restore-{how}-{len(list(image.glob('restore-*.log')))}.log"
        m1 = time.monotonic()
        io.append(disk_reads())
        criu_proc = subprocess.Popen(
            self.criu.argv("restore", "-D", str(image), "-o", log_name,
                           *(["-v4"] if verbose else []),
                           "--restore-detached", "--pidfile", str(pidfile), *self.criu_opts()),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        sampler = TaskSampler(criu_proc.pid)
        _, criu_err = criu_proc.communicate()
        m2 = time.monotonic()
        criu_tasks = sampler.stop()
        io.append(disk_reads())
        if criu_proc.returncode != 0:
            log = image / log_name
            raise RuntimeError(f"criu restore failed: {criu_err}\n{log.read_text()[-4000:]}")
        if criu_running is not None:  # CRIU is done: the disk is the loader's
            os.close(criu_running)
            criu_running = None
        pid = int(pidfile.read_text().strip())
        if how == "tail" and external:  # disk is idle from here: start on the weights' files
            fetcher = threading.Thread(target=prefetch, args=(external,), kwargs={"readers": 16})
            fetcher.start()
        step = CudaCheckpointStep(state_dir=image if storage == "file" else None)
        step.after_restore(pid, gpus)
        m3 = time.monotonic()
        io.append(disk_reads())
        hooks.write_signal(control, Signal.RESTORE_COMPLETE, {"pid": pid})
        wait_file(results / "restored.json", 120, pid)
        io.append(disk_reads())
        timeline.stop()
        proc_files = file_rss(pid)
        proc_files["vs_checkpoint"] = compare_pages(image, pid)
        cached = {
            "mapped_files": page_cache_bytes(mapped_files(pid)),
            "criu_files": page_cache_bytes([str(p) for p in criu_files(self.criu)]),
        }
        if how.startswith("ordered"):  # what the agent does a while after every restore
            from agent import procfs, working_set

            working["learned_now_bytes"] = working_set.learn(
                image, procfs.process_tree(pid), self.work
            )
        rec = json.loads((results / "restored.json").read_text())
        if fetcher:
            fetcher.join()
        loaded = {}
        if loader is not None:
            loader.wait(timeout=120)
            if standby is not None:
                marks["standby_served"] = standby.served
                self.close_standby()
            loaded = json.loads(loader_stats.read_text()) if loader_stats.exists() else {}
            if "started_wall" in loaded:  # the loader's clock starts when its Python does
                loaded["started_after_s"] = loaded.pop("started_wall") - t0
            if "trace" in loaded:
                loaded["trace"] = summarise_trace(loaded["trace"])
        res = {
            "how": how,
            "storage": storage,
            "weights": "release" if external else "keep",
            "weights_reload_s": rec.get("weights_reload_s", 0.0),
            "weights_source": rec.get("weights_source", ""),
            "hook_timings": rec.get("hook_timings", {}),
            "kv_remap_timings": rec.get("kv_remap_timings", {}),
            "loader": loaded,
            "logits_sha256": rec["logits_sha256"],
            "cuda_timings": dict(step.timings),
            "restore_s": rec["t_first"] - t0,
            "resumed_at_s": rec.get("t_resumed", rec["t_first"]) - t0,
            "restore_all_tokens_s": rec["t_done"] - t0,
            "prefetch_s": m1 - m0,
            "prefetch_gbps": pre.gbps if pre else None,
            "criu_restore_s": m2 - m1,
            "cuda_restore_unlock_s": m3 - m2,
            "resume_to_first_token_s": rec["t_first"] - t0 - (m3 - m0),
            "tokens": rec["tokens"],
            "pid": pid,
            # disk reads (bytes, requests) while: starting readers, CRIU, CUDA, resume to tokens
            "disk_reads": {
                phase: [b[0] - a[0], b[1] - a[1]]
                for phase, a, b in zip(
                    ("start", "criu", "cuda", "resume"), io, io[1:], strict=False
                )
            },
            "restored_file_rss": proc_files,
            "page_cache_after": cached,
            "criu_tasks": criu_tasks,
            "criu_stats": criu_restore_stats(image),
            "working_set": working,
            "marks": marks,
            "disk_timeline": timeline.points(),
        }
        print(
            f"restore[{res['weights']}/{how}] first token {res['restore_s']:.2f}s "
            f"(prefetch {m1 - m0:.2f} criu "
            f"{m2 - m1:.2f} cuda {m3 - m2:.2f} "
            f"resume+prefill {res['resume_to_first_token_s']:.2f}; weights from "
            f"{res['weights_source'] or '-'} {res['weights_reload_s']:.2f}s; hooks "
            f"{ {k: round(v, 3) for k, v in res['hook_timings'].items()} }; kv remap "
            f"{ {k: round(v, 3) for k, v in res['kv_remap_timings'].items()} }; loader {loaded}; "
            f"disk {res['disk_reads']}; files {proc_files})",
            flush=True,
        )
        kill(pid)
        return res

    def close_standby(self) -> None:
        if self.standby is not None:
            self.standby.close()
            self.standby = None

    def read_bandwidth(self, image: Path) -> dict:
        from sidecar.prefetch import prefetch

        files = artifact_files(image) + [
            Path(p) for p in json.loads((image / "external.json").read_text())
        ]
        seen = {}
        for readers in (1, 8, 16, 32):
            drop_caches()
            seen[f"page cache, {readers} readers"] = prefetch(files, readers=readers).gbps
        ramps = {}  # the disk's own ramp: its first RAMP_MB on a plain sequential read
        for readers in (1, 4, 16):  # what the loader does: the disk without the page cache
            drop_caches()
            key, marks = f"O_DIRECT 16 MiB, {readers} readers", []
            seen[key] = direct_read_gbps(files, readers, marks=marks)
            ramps[key] = reached([(0.0, 0.0), *marks], RAMP_MB)
        for readers, chunk in ((1, 16 << 20), (4, 4 << 20)):  # the loader's buffers: huge pages
            drop_caches()
            seen[f"O_DIRECT {chunk >> 20} MiB huge-page buffers, {readers} readers"] = (
                direct_read_gbps(files, readers, chunk, huge=True)
            )
        best = max(seen, key=seen.get)
        print(f"read bandwidth GB/s: {seen}", flush=True)
        return {"gbps_by_readers": seen, "best_readers": best, "best_gbps": seen[best],
                "first_ramp_mb_s_by_readers": ramps}  # fmt: skip

    def explore(self, proc, cold: dict) -> None:
        """Checkpoint the running engine once, then restore it once per mode (pick parameters)."""
        a = self.args
        control, results = self.work / "control-cold-empty", self.work / "results-cold-empty"
        image = self.work / "image-explore"
        ck = self.checkpoint(proc, control, results, image, "host")
        proc.kill()
        proc.wait(timeout=60)
        kill(proc.pid)
        rows, details = [], []
        variants = {"both": ["as dumped", "zero pages dropped"], "sparse": ["zero pages dropped"]}
        variants = variants.get(a.sparsify, ["as dumped"])
        for variant in variants:
            if variant == "zero pages dropped" and a.sparsify != "sparse":
                from agent.image_pages import census, drop_zero_pages

                t = time.monotonic()
                dropped = drop_zero_pages(image)
                ck["sparsify"] = {**dataclasses.asdict(dropped), "s": time.monotonic() - t,
                                  "census_after": census(image).to_dict()}  # fmt: skip
                print(f"sparsified: {ck['sparsify']}", flush=True)
            for how in a.restore_modes:
                x = self.restore(
                    image, control, results, how, verbose=how == "diagnose" or how.endswith("+v")
                )
                ok = (x["tokens"], x["logits_sha256"]) == (cold["tokens"], cold["logits_sha256"])
                rows.append((f"{how} [{variant}]", x["restore_s"], x["criu_restore_s"],
                             x["loader"], ok))  # fmt: skip
                details.append(x)
                self.results.update(explore=rows, explore_restores=details)
                self.save_partial()  # a run cut short still tells what it saw
        self.results.update(explore=rows, explore_restores=details, checkpoint=ck,
                            read_bandwidth=self.read_bandwidth(image))  # fmt: skip
        for how, t, c, ld, ok in rows:
            loaded, full = ld.get("loaded_at_s", 0), ld.get("full_speed_after_s", -1)
            print(f"{how:24s} {t:6.2f}s criu {c:5.2f} loaded@{loaded:5.2f} "
                  f"full@{full:5.2f} tokens {ok}", flush=True)  # fmt: skip

    # --- the whole run ------------------------------------------------------------------
    def next_checkpoint(self, proc, control: Path, results: Path) -> None:
        """Let the (serving) source quiesce again for another checkpoint."""
        for f in control.iterdir():
            f.unlink()
        (results / "checkpointed.json").unlink()
        (results / "next").touch()

    def save_partial(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "partial.json").write_text(json.dumps(self.results, indent=1, default=str))

    def run(self) -> dict:
        a = self.args
        t = time.monotonic()
        subprocess.run(
            [sys.executable, __file__, "prep", "--model", str(self.model)]
            + (["--small"] if a.small else []),
            check=True,
        )  # fmt: skip
        print(f"model prepared in {time.monotonic() - t:.1f}s", flush=True)
        inductor = self.work / "inductor"
        r = self.results
        r["thp"] = _read("/sys/kernel/mm/transparent_hugepage/enabled")
        r["read_ahead_kb"] = {
            p.name: _read(str(p / "queue" / "read_ahead_kb"))
            for p in Path("/sys/block").iterdir()
            if (p / "device").exists()
        }
        print(f"read_ahead_kb {r['read_ahead_kb']}; THP {r['thp']}", flush=True)
        # 1. cold start, empty compile cache (mode off: it just serves and exits)
        proc, r["cold_start_s_empty_cache"], cold, _, _ = self.cold_start(
            "cold-empty",
            inductor,
            "checkpoint" if a.explore else None,
            "unmap",
            "release" if a.explore else "keep",
        )
        if a.explore:  # this engine is the source; only restores are compared
            a.weights = []
            self.explore(proc, cold)
            return r
        proc.wait(timeout=60)
        ref = (cold["tokens"], cold["logits_sha256"])
        r["reference_tokens"] = cold["tokens"]
        # 2. warm-cache cold starts that are also the checkpoint sources: the engine keeping
        #    its weights in the snapshot, and the engine releasing them (refilled from files)
        checkpoints, restores, warm, same = {}, [], {}, []
        for weights in a.weights:
            name = f"source-{weights}"
            proc, warm[weights], cold2, control, results = self.cold_start(
                name, inductor, "checkpoint", "unmap", weights
            )
            same.append((cold2["tokens"], cold2["logits_sha256"]) == ref)
            image = self.work / f"image-{weights}"
            try:
                checkpoints[weights] = self.checkpoint(proc, control, results, image, "host")
            except Exception as e:
                print(f"checkpoint[{weights}] FAILED: {e}", flush=True)
                r.setdefault("errors", []).append(f"checkpoint[{weights}]: {e}")
            proc.kill()
            proc.wait(timeout=60)
            kill(proc.pid)
            if weights not in checkpoints:
                continue
            for how in a.keep_modes if weights == "keep" else a.restore_modes:
                try:
                    restores.append(self.restore(image, control, results, how))
                except Exception as e:
                    print(f"restore[{weights}/{how}] FAILED: {e}", flush=True)
                    r.setdefault("errors", []).append(f"restore[{weights}/{how}]: {e}")
            r.update(checkpoints=checkpoints, restores=restores, warm_cold_starts=warm)
            self.save_partial()
        best = min(restores, key=lambda x: x["restore_s"])
        best_image = self.work / f"image-{best['weights']}"
        # The headline is the median of several restores of the best path, not its best sample,
        # taken after the first restore of the snapshot: that one learned the working set
        # (agent.working_set) every later replica's restore reads (reported on its own).
        samples = [self.restore(best_image, control, results, best["how"]) for _ in range(a.repeat)]
        restores += samples
        median = statistics.median(x["restore_s"] for x in samples)
        r["restore_samples_s"] = [x["restore_s"] for x in samples]
        r["restore_first_s"] = best["restore_s"]
        ck = checkpoints[best["weights"]]
        artifact, external = ck["artifact_bytes"], ck["external_bytes"]
        bw = floor_bandwidth(self.read_bandwidth(best_image), restores, artifact + external)
        sources_ok = all(
            (c["source_tokens"], c["source_logits_sha256"]) == ref for c in checkpoints.values()
        )
        r.update(
            cold_start_s_warm_cache=min(warm.values()),
            checkpoint_s=ck["checkpoint_s"],
            restore_s=median,
            restore_best=f"weights {best['weights']}, {best['how']}",
            storage_floor_s=(artifact + external) / (bw["best_gbps"] * 1e9),
            artifact_bytes=artifact,
            external_bytes=external,
            gpu_resident_bytes=ck["gpu_resident_bytes"],
            gpu_bytes_serving=ck["gpu_bytes_serving"],
            tokens_match=all((x["tokens"], x["logits_sha256"]) == ref for x in restores)
            and sources_ok
            and all(same),
            distinct_tokens=len(set(cold["tokens"])),
            read_bandwidth=bw,
        )
        self.save_partial()
        if a.diagnose:  # one more restore with CRIU's debug log, untimed, for the record
            self.restore(best_image, control, results, "diagnose", verbose=True)
        for w in checkpoints:
            if w != best["weights"]:
                shutil.rmtree(self.work / f"image-{w}", ignore_errors=True)
        # 3. the same engine with its KV cache left mapped during the dump
        if a.kv_plain:
            proc, _, _, control, results = self.cold_start(
                "source-plain", inductor, "checkpoint", "plain", best["weights"]
            )
            plain_image = self.work / "image-plain"
            # as dumped: this KV cache is still zero (reset, never served into); a serving
            # engine's is not, so dropping zero pages would hide what leaving it mapped costs
            pk = self.checkpoint(proc, control, results, plain_image, "host", sparsify=False)
            proc.kill()
            proc.wait(timeout=60)
            kill(proc.pid)
            pr = self.restore(plain_image, control, results, best["how"])
            r["kv_unmap"] = {
                "kv_cache_bytes": int(a.kv_gib * GIB),
                "weights": best["weights"],
                "plain": {
                    "artifact_bytes": pk["artifact_bytes"],
                    "gpu_resident_bytes": pk["gpu_resident_bytes"],
                    "checkpoint_s": pk["checkpoint_s"],
                    "restore_s": pr["restore_s"],
                    "tokens_match": (pr["tokens"], pr["logits_sha256"]) == ref,
                },
                "unmapped": {
                    "artifact_bytes": artifact,
                    "gpu_resident_bytes": ck["gpu_resident_bytes"],
                    "checkpoint_s": ck["checkpoint_s"],
                    "restore_s": best["restore_s"],
                },
            }
            shutil.rmtree(plain_image, ignore_errors=True)
        return r


def peak_read_gbps(restores: list[dict], window: float = 1.0) -> float:
    """The fastest ``window`` seconds of disk reads seen during any restore (GB/s)."""
    best = 0.0
    for x in restores:
        points = x.get("disk_timeline", [])
        for i, (t, mb) in enumerate(points):
            later = next((p for p in points[i + 1 :] if p[0] - t >= window), None)
            if later is not None:
                best = max(best, (later[1] - mb) / (later[0] - t) / 1e3)
    return best


def floor_bandwidth(bw: dict, restores: list[dict], floor_bytes: int) -> dict:
    """The floor's bandwidth: the best reader setting, or the restores' own fastest stretch.

    The disk's speed drifts within a run; a reader test caught in a slow moment
    would make a floor the restores themselves beat, so whichever is faster counts.
    The restores' stretch is as long as the floor itself: some disks burst for a
    fraction of a second above what they keep up, and a shorter window (the rule
    before session 13: one second) asks a read of the floor's size for a rate no
    reader gets, not even a plain read with nothing else to do. Both are recorded.
    """
    bw = {**bw, "readers_best_gbps": bw.get("readers_best_gbps", bw["best_gbps"])}
    bw["restores_peak_1s_gbps"] = peak_read_gbps(restores)
    bw["restores_sustained_gbps"] = sustained_read_gbps(
        restores, floor_bytes, bw["readers_best_gbps"]
    )
    if bw["restores_sustained_gbps"] > bw["readers_best_gbps"]:
        bw["best_gbps"] = bw["restores_sustained_gbps"]
        bw["best_readers"] = "the restores' own reads, their fastest stretch as long as the floor"
    else:
        bw["best_gbps"] = bw["readers_best_gbps"]
        tried = bw.get("gbps_by_readers") or {}
        bw["best_readers"] = (
            max(tried, key=tried.get) if tried else bw.get("best_readers", "the reader test")
        )
    return bw


def sustained_read_gbps(restores: list[dict], floor_bytes: int, readers_gbps: float) -> float:
    """The fastest rate any read of the run kept up for as long as the floor's bytes take.

    The reader test reads the floor's bytes whole; the restores' disk timelines are
    searched for their fastest stretch of that length (a fixed point: the window is
    the floor, the floor is the bytes at the window's rate).
    """
    rate = max(readers_gbps, peak_read_gbps(restores))
    for _ in range(50):
        window = floor_bytes / rate / 1e9
        settled = max(readers_gbps, peak_read_gbps(restores, window))
        if abs(rate - settled) < 1e-4:
            return settled
        rate = settled
    return rate


def rescore(r: dict) -> dict:
    """A results file's floor recomputed from its own measurements under the current rule."""
    floor_bytes = r["artifact_bytes"] + r["external_bytes"]
    bw = floor_bandwidth(r["read_bandwidth"], r["restores"], floor_bytes)
    floor = floor_bytes / (bw["best_gbps"] * 1e9)
    return {**r, "read_bandwidth": bw, "storage_floor_s": floor}


RAMP_MB = 200  # the restore's first reads: CRIU's small images, file heads, cold opens
HEAD_S, HEAD_READS = 0.25, 400  # the restore's first moments, kept read by read
DONE_SHARE = 0.995  # the disk is done when this share is read (a few MB trickle in later)


def reached(points: Sequence[tuple[float, float]], mb: float) -> float:
    """When a (seconds, MB read) timeline got to ``mb``, interpolated (its end if never)."""
    for (t0, m0), (t1, m1) in itertools.pairwise(points):
        if m1 >= mb:
            return t0 + (t1 - t0) * (mb - m0) / max(m1 - m0, 1e-9)
    return points[-1][0]


def read_by(points: Sequence[tuple[float, float]], t: float) -> float:
    """MB a (seconds, MB read) timeline had read at ``t``, interpolated (all if past its end)."""
    for (t0, m0), (t1, m1) in itertools.pairwise(points):
        if t1 >= t:
            return m0 + (m1 - m0) * (t - t0) / max(t1 - t0, 1e-9)
    return points[-1][1]


def disk_points(restore: dict) -> list[tuple[float, float]]:
    """A restore's disk timeline as (seconds, MB read) points from its start."""
    return [(0.0, 0.0), *map(tuple, restore["disk_timeline"])]


def restore_gaps(restore: dict, floor_bytes: int, peak_gbps: float) -> dict:
    """Where one restore's time over the storage floor went (seconds), from its disk timeline.

    ``ramp``: reading the first ``RAMP_MB`` took longer than at the floor's rate
    (small, latency-bound reads); ``below_peak``: the rest of the reads ran under
    that rate; ``extra``: bytes read beyond the floor's (heads, working set,
    CRIU's own); ``tail``: from the disk's last read to the first token. With
    ``floor`` they add up to ``restore_s``. Bytes count up to the first token.
    """
    rate = peak_gbps * 1e3  # MB/s
    points = disk_points(restore)
    end = restore["restore_s"]
    total = read_by(points, end)  # the timeline goes on sampling after the first token
    floor = floor_bytes / 1e6 / rate
    ramp = reached(points, min(RAMP_MB, total)) - min(RAMP_MB, total) / rate
    done = reached(points, total * DONE_SHARE)
    extra = (total - floor_bytes / 1e6) / rate
    tail = end - done
    below = end - floor - ramp - extra - tail
    return {"floor": floor, "ramp": ramp, "below_peak": below, "extra": extra, "tail": tail}


def restore_start(restore: dict) -> dict | None:
    """The restore's first moments: are the loader's readers at the disk, and what does it give?

    From the loader's trace (seconds into its fill): readers inside a read from 0.05 to 0.10 s,
    reads done by 0.1 s, the slowest tenth of those begun before 0.1 s (ms); from the disk
    timeline (seconds into the restore): MB read by 0.1 and 0.2 s. None without a trace.
    """
    trace = (restore.get("loader") or {}).get("trace") or {}
    head, per_50ms = trace.get("head"), trace.get("per_50ms")
    if not head or not per_50ms or not restore.get("disk_timeline"):
        return None
    busy = next((row[3] for row in per_50ms if row[0] == 0.05), 0.0)
    took = sorted(done - start for _, start, done, _ in head if start < 0.1)
    points = disk_points(restore)
    return {
        "busy": busy,
        "reads": sum(1 for _, _, done, _ in head if done < 0.1),
        "slow_ms": took[int(0.9 * len(took))] * 1e3 if took else 0.0,
        "disk_01": read_by(points, 0.1),
        "disk_02": read_by(points, 0.2),
    }


def floor_rules(r: dict) -> list[tuple[str, float, float]]:
    """The headline restore against the floor under each rule: (rule, GB/s, ratio)."""
    floor_bytes = r["artifact_bytes"] + r["external_bytes"]
    bw = floor_bandwidth(r["read_bandwidth"], r.get("restores") or [], floor_bytes)
    rules = [
        ("the reader test alone", bw["readers_best_gbps"]),
        ("or the restores' fastest second (the rule before session 13)",
         max(bw["readers_best_gbps"], bw["restores_peak_1s_gbps"])),
        ("or the restores' fastest stretch as long as the floor (the rule)", bw["best_gbps"]),
    ]  # fmt: skip
    return [(rule, gbps, r["restore_s"] * gbps * 1e9 / floor_bytes) for rule, gbps in rules]


def gaps_report(r: dict) -> str:
    """:func:`restore_gaps` of every timed restore in a results file (full run or explore)."""
    restores = r.get("restores") or r.get("explore_restores") or []
    sizes = r if "artifact_bytes" in r else r["checkpoint"]
    floor_bytes = sizes["artifact_bytes"] + sizes["external_bytes"]
    peak = floor_bandwidth(r["read_bandwidth"], restores, floor_bytes)["best_gbps"]
    floor_s = floor_bytes / peak / 1e9
    rows = [f"floor {floor_bytes / 1e9:.2f} GB at {peak:.2f} GB/s = {floor_s:.2f} s"]
    for setting, first_s in r["read_bandwidth"].get("first_ramp_mb_s_by_readers", {}).items():
        over = first_s - RAMP_MB / 1e3 / peak  # a plain read's own ramp, beside the restores'
        rows.append(f"{setting}: first {RAMP_MB} MB in {first_s:.2f} s ({over:.2f} s ramp)")
    rows += ["| restore | s | floor | ramp | below peak | extra bytes | tail |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for x in restores:
        if x.get("disk_timeline") and x.get("weights", "release") == "release":
            g = restore_gaps(x, floor_bytes, peak)
            cells = " | ".join(f"{v:.2f}" for v in g.values())
            rows.append(f"| {x['how']} | {x['restore_s']:.2f} | {cells} |")
    starts = [(x, restore_start(x)) for x in restores]
    if any(st for _, st in starts):
        rows += [
            "| restore | s | readers busy 0.05-0.1 s | reads by 0.1 s | slowest tenth ms "
            "| disk MB by 0.1 s | by 0.2 s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        rows += [
            f"| {x['how']} | {x['restore_s']:.2f} | {st['busy']:.1f} | {st['reads']} "
            f"| {st['slow_ms']:.0f} | {st['disk_01']:.0f} | {st['disk_02']:.0f} |"
            for x, st in starts
            if st
        ]
    if r.get("restore_s") and r.get("restores"):
        rows += ["| floor's rate | GB/s | restore / floor |", "| --- | --- | --- |"]
        rows += [f"| {rule} | {gbps:.2f} | {ratio:.2f}x |" for rule, gbps, ratio in floor_rules(r)]
    return "\n".join(rows)


def direct_read_gbps(
    files: list[Path],
    readers: int,
    chunk: int = 16 << 20,
    huge: bool = False,
    marks: list[tuple[float, float]] | None = None,
) -> float:
    """Read every file once with O_DIRECT (no page cache), ``readers`` requests in flight.

    ``huge``: buffers on huge pages, as the loader's (fewer, larger disk requests).
    ``marks`` gets (seconds, MB read so far) as each read completes.
    """
    import mmap

    jobs = []
    for path in files:
        size = path.stat().st_size
        jobs += [(path, off) for off in range(0, size, chunk)]
    local = threading.local()
    total = [0]
    lock = threading.Lock()

    def read(job: tuple[Path, int]) -> None:
        if not hasattr(local, "buf"):
            local.buf, local.fds = mmap.mmap(-1, chunk), {}  # page-aligned, as O_DIRECT wants
            if huge:
                local.buf.madvise(mmap.MADV_HUGEPAGE)
        path, off = job
        fd = local.fds.get(path)
        if fd is None:
            fd = local.fds[path] = os.open(path, os.O_RDONLY | os.O_DIRECT)
        n = os.preadv(fd, [local.buf], off)
        with lock:
            total[0] += n
            if marks is not None:
                marks.append((time.monotonic() - t0, total[0] / 1e6))

    t0 = time.monotonic()
    opened: list[dict] = []
    try:
        with ThreadPoolExecutor(readers, initializer=lambda: opened.append(local.__dict__)) as pool:
            list(pool.map(read, jobs))
    finally:
        for state in opened:
            for fd in state.get("fds", {}).values():
                os.close(fd)
    return total[0] / (time.monotonic() - t0) / 1e9


def compare_pages(image: Path, pid: int) -> dict:
    """The restored process's mapped file pages now vs those recorded at the checkpoint."""
    from agent import file_pages

    def pages(ranges) -> set:
        return {(r.path, off) for r in ranges for off in range(r.offset, r.offset + r.length, 4096)}

    try:
        rec = file_pages.FilePages.from_json((image / FILE_PAGES_FILE).read_bytes())
        ck = list(rec.cow) + list(rec.mapped)
        now = file_pages.touched(pid)
    except (OSError, ValueError):
        return {}
    a, b = pages(ck), pages(now)
    by_file: dict[str, int] = {}
    for path, _ in a:
        by_file[path] = by_file.get(path, 0) + 4096
    top = sorted(by_file.items(), key=lambda kv: -kv[1])[:10]
    return {"checkpoint_bytes": len(a) * 4096, "restored_bytes": len(b) * 4096,
            "both_bytes": len(a & b) * 4096, "restored_only_bytes": len(b - a) * 4096,
            "checkpoint_top": [[Path(k).name, v] for k, v in top]}  # fmt: skip


def disk_reads() -> tuple[int, int]:
    """(bytes, requests) read so far from this machine's disks (not partitions, not loops)."""
    disks = {p.name for p in Path("/sys/block").iterdir() if (p / "device").exists()}
    nbytes = nreq = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if len(f) > 6 and f[2] in disks:
            nreq += int(f[3])
            nbytes += int(f[5]) * 512
    return nbytes, nreq


class DiskTimeline:
    """MB read from the disks since the start, every ``step`` seconds: where the disk idles."""

    def __init__(self, step: float = 0.05) -> None:
        self.t0, self.base = time.monotonic(), disk_reads()[0]
        self.samples: list[list[float]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(step,), daemon=True)
        self.thread.start()

    def _run(self, step: float) -> None:
        while not self.done.wait(step):
            mb = (disk_reads()[0] - self.base) / 1e6
            self.samples.append([round(time.monotonic() - self.t0, 3), round(mb, 1)])

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def points(self) -> list[list[float]]:
        return self.samples


class TaskSampler:
    """What the tasks under ``root`` are doing, every ``step`` seconds: running, or waiting on what.

    Task states and kernel wait channels from /proc, for CRIU's tree during a restore: where
    its time goes (CPU, disk waits, page faults, locks) without a profiler on the machine.
    """

    def __init__(self, root: int, step: float = 0.005) -> None:
        self.root, self.step, self.t0 = root, step, time.monotonic()
        self.hist: dict[tuple[str, str, str], int] = {}
        self.timeline: dict[int, list[int]] = {}  # 50 ms bucket -> [samples, R, D]
        self.head: list[list] = []  # the first HEAD_S: [seconds, state:wait channel per task]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _tasks(self) -> list[tuple[int, int]]:
        out, todo, seen = [], [self.root], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                out.append((pid, int(tid)))
                with contextlib.suppress(OSError, ValueError):
                    todo += [int(c) for c in _read(f"/proc/{pid}/task/{tid}/children").split()]
        return out

    def _run(self) -> None:
        while not self.done.wait(self.step):
            bucket = self.timeline.setdefault(int((time.monotonic() - self.t0) / 0.05), [0, 0, 0])
            bucket[0] += 1
            now = round(time.monotonic() - self.t0, 3)
            states: list[str] = []
            for pid, tid in self._tasks():
                line = _read(f"/proc/{pid}/task/{tid}/stat")
                if not line:
                    continue
                comm = line[line.find("(") + 1 : line.rfind(")")]
                state = line[line.rfind(")") + 2 : line.rfind(")") + 3]
                wchan = "-" if state == "R" else _read(f"/proc/{pid}/task/{tid}/wchan") or "?"
                key = (comm, state, wchan)
                self.hist[key] = self.hist.get(key, 0) + 1
                states.append(f"{state}:{wchan}")
                bucket[1] += state == "R"
                bucket[2] += state == "D"
            if now < HEAD_S:
                self.head.append([now, *states])

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        top = sorted(self.hist.items(), key=lambda kv: -kv[1])[:24]
        return {
            "step_s": self.step,
            # task-seconds per (command, state, wait channel)
            "top": [[c, st, w, round(n * self.step, 3)] for (c, st, w), n in top],
            "head": self.head,
            # per 50 ms: average number of tasks running, in uninterruptible (disk) wait
            "timeline": [
                [round(b * 0.05, 2), round(r / n, 2), round(d / n, 2)]
                for b, (n, r, d) in sorted(self.timeline.items())
            ],
        }


def page_cache_bytes(paths: list[str]) -> dict:
    """Bytes of each file in the page cache (mincore), the biggest first."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = os.sysconf("SC_PAGE_SIZE")
    per: dict[str, int] = {}
    for p in paths:
        try:
            if not stat.S_ISREG(os.stat(p).st_mode):
                continue  # device nodes (the GPU's) and the like: no pages to count
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                continue
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                continue
            vec = ctypes.create_string_buffer((size + page - 1) // page)
            if libc.mincore(addr, size, vec) == 0:
                per[p] = sum(b & 1 for b in vec.raw) * page
            libc.munmap(addr, size)
        finally:
            os.close(fd)
    top = sorted(per.items(), key=lambda kv: -kv[1])[:10]
    return {"bytes": sum(per.values()), "files": len(per),
            "top": [[Path(k).name, v] for k, v in top]}  # fmt: skip


def criu_files(spec) -> list[Path]:
    """CRIU's binary, its loader and the libraries beside it: what CRIU's start reads."""
    out = [Path(spec.binary)] + ([Path(spec.loader)] if spec.loader else [])
    for d in spec.library_path:
        with contextlib.suppress(OSError):
            out += sorted(p for p in Path(d).iterdir() if p.is_file() and not p.is_symlink())
    return out


def criu_restore_stats(image: Path) -> dict:
    """CRIU's own stats of the last restore (``stats-restore``): times in seconds.

    The file is two magics, then one length-prefixed ``StatsEntry``.
    """
    try:
        from google.protobuf.json_format import MessageToDict
        from pycriu.images.stats_pb2 import stats_entry

        raw = (image / "stats-restore").read_bytes()
        size = int.from_bytes(raw[8:12], "little")
        entry = stats_entry()
        entry.ParseFromString(raw[12 : 12 + size])
        rs = MessageToDict(entry.restore, preserving_proto_field_name=True)
    except Exception as e:  # no file, no pycriu: say so, the run goes on
        return {"error": str(e)}
    return {k: (int(v) / 1e6 if k.endswith("_time") else int(v)) for k, v in rs.items()}


def summarise_trace(trace: list) -> dict:
    """The loader's reads per 50 ms: MB done and readers busy, by kind (first list, regions)."""
    done: dict[int, list[float]] = {}
    busy: dict[int, float] = {}
    for kind, start, read_done, _end, n in trace:
        done.setdefault(int(read_done / 0.05), [0.0, 0.0])[kind != "first"] += n / 1e6
        for b in range(int(start / 0.05), int(read_done / 0.05) + 1):
            # reading (or held by the throttle), not waiting for the GPU
            overlap = min(read_done, (b + 1) * 0.05) - max(start, b * 0.05)
            if overlap > 0:
                busy[b] = busy.get(b, 0.0) + overlap / 0.05
    return {
        "reads": len(trace),
        # every read begun in the first HEAD_S: [kind, started, read done, MB], who waits first
        "head": [[k, a, b, round(n / 1e6, 2)] for k, a, b, _, n in trace if a < HEAD_S][
            :HEAD_READS
        ],
        # [seconds into the fill, MB of the first list done, MB of regions done, readers busy]
        "per_50ms": [
            [
                round(k * 0.05, 2),
                *(round(x, 1) for x in done.get(k, [0.0, 0.0])),
                round(busy.get(k, 0.0), 2),
            ]
            for k in sorted(set(done) | set(busy))
        ],
    }


def file_rss(pid: int) -> dict:
    """Resident bytes of mapped files (the restored process read them all after the drop)."""
    per: dict[str, int] = {}
    path, majflt = "", 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split(None, 5)
            if head and "-" in head[0] and len(head) >= 5:
                path = head[5] if len(head) == 6 and head[5].startswith("/") else ""
            elif path and line.startswith("Rss:"):
                per[path] = per.get(path, 0) + int(line.split()[1]) * 1024
        majflt = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[9])
    top = sorted(per.items(), key=lambda kv: -kv[1])[:8]
    return {"bytes": sum(per.values()), "files": len(per), "majflt": majflt,
            "top": [[Path(k).name, v] for k, v in top]}  # fmt: skip


def mapped_files(pid: int) -> list[str]:
    """Files the process maps: CRIU reopens each on restore (cold metadata costs time)."""
    seen: dict[str, None] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/") and not parts[5].endswith(")"):
                seen[parts[5]] = None
    return list(seen)


def warm_metadata(image: Path) -> None:
    """Open every mapped file once, in parallel, so CRIU's opens find dentries and inodes."""
    paths = json.loads((image / "mapped-files.json").read_text())

    def touch(p: str) -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(p, os.O_RDONLY))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(touch, paths))


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def artifact_files(image: Path) -> list[Path]:
    """What a restore reads: CRIU images (small first, pages last), then GPU state files."""
    imgs = sorted(image.glob("*.img"), key=lambda p: (p.name.startswith("pages-"), p.name))
    return imgs + sorted(image.glob("gpu-*.bin"))


def device_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except OSError:
        out = "unknown GPU"
    return f"{out}; {os.cpu_count()} CPUs; kernel {os.uname().release}"


def without_paths(r: dict, work: Path) -> dict:
    """Results as committed: the work folder of the machine that ran them is not named."""
    return json.loads(json.dumps(r, default=str).replace(str(work), "<work>"))


def _file_pages_note(ws: dict) -> str:
    if ws.get("learned"):
        return f"working set learned by earlier restores, {ws['bytes'] / 1e6:.0f} MB"
    return "all the dump recorded (nothing learned yet)"


def _loader_io(loader: dict) -> str:
    """How the loader read: from the page cache the agent's stream filled, or O_DIRECT."""
    cached = min(loader.get("cached_bytes", 0.0), loader["bytes"])
    if not cached:
        return "O_DIRECT" if loader["direct"] else "page cache"
    rest = loader["bytes"] - cached
    return f"{cached / 1e9:.2f} GB from the agent's read stream (page cache)" + (
        f", {rest / 1e9:.2f} GB {'O_DIRECT' if loader['direct'] else 'page cache'}" if rest else ""
    )


def write_outputs(out: Path, r: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-restore.json").write_text(json.dumps(r, indent=2, sort_keys=True) + "\n")
    floor = r["storage_floor_s"]
    gb = 1e9
    empty_x = r["cold_start_s_empty_cache"] / r["restore_s"]
    warm_x = r["cold_start_s_warm_cache"] / r["restore_s"]
    rows = [
        ("cold start, empty compile cache", f"{r['cold_start_s_empty_cache']:.2f} s", ""),
        ("cold start, warm compile cache", f"{r['cold_start_s_warm_cache']:.2f} s", ""),
        ("checkpoint (lock, CRIU dump, source resumed)", f"{r['checkpoint_s']:.2f} s", ""),
        ("restore to first token", f"{r['restore_s']:.2f} s",
         f"median of {len(r['restore_samples_s'])} restores "
         f"({', '.join(f'{x:.2f}' for x in r['restore_samples_s'])} s); "
         f"{r['restore_s'] / floor:.2f}x floor (target <= 1.2x)"
         + (f"; the snapshot's first restore, before any working set was learned: "
            f"{r['restore_first_s']:.2f} s" if "restore_first_s" in r else "")),
        ("storage floor", f"{floor:.2f} s",
         f"({r['artifact_bytes'] / gb:.2f} GB snapshot + {r['external_bytes'] / gb:.2f} GB "
         f"weight files read on resume) at {r['read_bandwidth']['best_gbps']:.2f} GB/s, the best "
         f"of this disk in this run ({r['read_bandwidth']['best_readers']}; reader test "
         f"{r['read_bandwidth'].get('readers_best_gbps', r['read_bandwidth']['best_gbps']):.2f}"
         f" GB/s, the restores' fastest stretch as long as the floor "
         f"{r['read_bandwidth'].get('restores_sustained_gbps', 0):.2f} GB/s, their fastest "
         f"second {r['read_bandwidth'].get('restores_peak_1s_gbps', 0):.2f} GB/s)"),
        ("speed-up vs empty-cache cold start", f"{empty_x:.1f}x",
         "target >= 15x"),
        ("speed-up vs warm-cache cold start", f"{warm_x:.1f}x",
         "target >= 8x"),
        ("artifact", f"{r['artifact_bytes'] / gb:.2f} GB",
         f"GPU-resident at checkpoint {r['gpu_resident_bytes'] / gb:.2f} GB, while serving "
         f"{r['gpu_bytes_serving'] / gb:.2f} GB (target: artifact <= GPU-resident + 1.5 GB)"),
        ("tokens identical after restore", str(r["tokens_match"]),
         f"{NEW_TOKENS} greedy tokens ({r['distinct_tokens']} distinct) and logits digests"),
        ("best restore path", r["restore_best"], "weights in snapshot or released; read strategy"),
    ]  # fmt: skip
    for k, c in r["checkpoints"].items():
        rows.append(
            (f"checkpoint [weights {k}]", f"{c['checkpoint_s']:.2f} s",
             f"artifact {c['artifact_bytes'] / gb:.2f} GB, GPU-resident "
             f"{c['gpu_resident_bytes'] / gb:.2f} GB, CUDA {c['cuda_lock_checkpoint_s']:.2f}, "
             f"CRIU dump {c['criu_dump_s']:.2f}, source resumed {c['cuda_resume_source_s']:.2f}")
        )  # fmt: skip
    for x in r["restores"]:
        rows.append(
            (f"restore [weights {x['weights']}, {x['how']}]", f"{x['restore_s']:.2f} s",
             f"prefetch {x['prefetch_s']:.2f}, CRIU {x['criu_restore_s']:.2f}, CUDA "
             f"{x['cuda_restore_unlock_s']:.2f}, resume+prefill {x['resume_to_first_token_s']:.2f} "
             f"(weights from {x.get('weights_source') or 'snapshot'}: "
             f"{x['weights_reload_s']:.2f} in the worker"
             + (f"; loader {x['loader']['bytes'] / gb:.2f} GB in {x['loader']['load_s']:.2f} s, "
                + _loader_io(x["loader"]) if x.get("loader", {}).get("load_s") else "")
             + (f"; file pages read ahead: {_file_pages_note(x['working_set'])}"
                if x.get("working_set") else "") + ")")
        )  # fmt: skip
    x = r.get("restore_thp_always")
    if x:
        rows.append(
            (f"restore [{x['storage']}/{x['how']}] with THP=always (node tuning)",
             f"{x['restore_s']:.2f} s",
             f"{x['restore_s'] / floor:.2f}x floor; CRIU {x['criu_restore_s']:.2f}, CUDA "
             f"{x['cuda_restore_unlock_s']:.2f}, resume+prefill {x['resume_to_first_token_s']:.2f}")
        )  # fmt: skip
    kv = r.get("kv_unmap")
    if kv:
        for k in ("plain", "unmapped"):
            rows.append(
                (f"{kv['kv_cache_bytes'] / (1 << 30):.0f} GiB KV cache, {k}",
                 f"{kv[k]['artifact_bytes'] / gb:.2f} GB",
                 f"restore {kv[k]['restore_s']:.2f} s, checkpoint {kv[k]['checkpoint_s']:.2f} s")
            )  # fmt: skip
    artifact_ok = r["artifact_bytes"] <= r["gpu_resident_bytes"] + 1.5e9
    targets = [
        ("restore <= 1.2x storage floor", f"{r['restore_s']:.2f} s vs {floor:.2f} s = "
         f"{r['restore_s'] / floor:.2f}x", r["restore_s"] <= 1.2 * floor),
        (">= 15x faster than cold start, empty compile cache",
         f"{r['cold_start_s_empty_cache']:.1f} s / {r['restore_s']:.2f} s = {empty_x:.1f}x",
         empty_x >= 15),
        (">= 8x faster than cold start, warm compile cache",
         f"{r['cold_start_s_warm_cache']:.1f} s / {r['restore_s']:.2f} s = {warm_x:.1f}x",
         warm_x >= 8),
        ("artifact <= GPU-resident + 1.5 GB", f"{r['artifact_bytes'] / gb:.2f} GB vs "
         f"{r['gpu_resident_bytes'] / gb:.2f} + 1.5 GB", artifact_ok),
        ("tokens identical after restore", "every restore and the resumed sources",
         bool(r["tokens_match"])),
    ]  # fmt: skip
    lines = [
        "# GPU restore benchmark",
        "",
        f"Device: {r['device']}. Model: {r['model']}.",
        "",
        "| what | value | notes |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "## Targets (this run)",
        "",
        "| target | result | met? |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {'yes' if c else 'no'} |" for a, b, c in targets],
        "",
    ]
    (out / "gpu-restore.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--model", required=True)
    w.add_argument("--results", required=True)
    w.add_argument("--kv-gib", type=float, default=16)
    w.add_argument("--kv-mode", choices=("unmap", "plain"), default="unmap")
    w.add_argument("--weights", choices=("keep", "release"), default="keep")
    p = sub.add_parser("prep")
    p.add_argument("--model", required=True)
    p.add_argument("--small", action="store_true")
    rs = sub.add_parser("rescore", help="rewrite a results JSON's floor and table")
    rs.add_argument("--json", required=True, type=Path)
    rs.add_argument("--out", required=True, type=Path)
    g = sub.add_parser("gaps", help="where each restore's time over the floor went")
    g.add_argument("--json", required=True, type=Path)
    r = sub.add_parser("run")
    r.add_argument("--out", default=str(REPO / "bench" / "results"))
    r.add_argument("--work", default=str(REPO / ".bench-work"))
    r.add_argument("--kv-gib", type=float, default=16)
    r.add_argument("--readers", type=int, default=16)
    r.add_argument("--small", action="store_true", help="tiny model: a smoke test of the pipeline")
    r.add_argument("--no-kv-plain", dest="kv_plain", action="store_false")
    modes = ("direct", "prefetch", "overlap", "trickle", "stream", "tail", "loader",
             "loader-full", "loader-buffered", "loader-pf", "ordered", "ordered-nolibs",
             "ordered-recorded", "ordered-noprime", "ordered-criuwarm", "diagnose")  # fmt: skip
    r.add_argument(
        "--restore-modes",
        nargs="+",
        type=lambda m: (
            m if m.removesuffix("+v").split("@")[0] in modes else parser.error(f"mode {m}")
        ),
        default=["direct", "loader", "ordered"],
    )
    r.add_argument("--repeat", type=int, default=3, help="restores of the best path (median)")
    r.add_argument(
        "--explore", action="store_true",
        help="one engine releasing its weights, restored once per --restore-modes; no targets",
    )  # fmt: skip
    r.add_argument("--keep-modes", nargs="+", choices=modes, default=["direct"])
    r.add_argument("--weights", nargs="+", default=["keep", "release"], choices=("keep", "release"))
    r.add_argument("--diagnose", action="store_true", help="an extra restore with CRIU -v4")
    r.add_argument(
        "--sparsify", choices=("no", "both", "sparse"), default="sparse",
        help="explore: restore the image as dumped, without its zero pages, or both",
    )  # fmt: skip
    args = parser.parse_args()
    if args.cmd == "worker":
        worker(args)
    elif args.cmd == "prep":
        prep(args)
    elif args.cmd == "rescore":
        write_outputs(args.out, rescore(json.loads(args.json.read_text())))
    elif args.cmd == "gaps":
        print(gaps_report(json.loads(args.json.read_text())))
    else:
        bench = Bench(args)
        try:
            results = bench.run()
        finally:
            bench.close_standby()
        results["device"] = device_name()
        results["model"] = (
            "Qwen2-shaped causal LM, tiny smoke config" if args.small
            else "Qwen2-shaped causal LM, hidden 2048, 24 layers, vocab 65536, ~1.7B params, bf16"
        )  # fmt: skip
        results["criu_version"] = bench.criu_version
        results = without_paths(results, bench.work)
        if args.explore:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "explore.json").write_text(json.dumps(results, indent=1))
        else:
            write_outputs(Path(args.out), results)


if __name__ == "__main__":
    main()
