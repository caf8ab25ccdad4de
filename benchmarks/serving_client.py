"""Speed of the serving client: can llem's load generator keep a fast server busy?

A loopback stub (its own process) answers every `/v1/completions` request by streaming 16
tokens at once, stamped with its monotonic clock. llem's client and vLLM's own benchmark
client (`vllm.benchmarks.serve`, run as a module in its own process) send the same closed
loop to the same stub, alternating, `--repeats` times. Printed: requests per second of each
(median and range), their ratio, and how far llem's first-token timestamps lie from the
stub's own stamps (same machine, same monotonic clock).

    python benchmarks/serving_client.py --requests 4000 --concurrency 64 --repeats 3

Goals: llem >= 500 requests/s sustained, >= vLLM's client in the same run, timestamps within 1 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKENS = 16

STUB = r'''
import asyncio, json, sys, time
stamps = open(sys.argv[2], "w", buffering=1)
TOKENS = int(sys.argv[3])

def chunk(b):
    return b"%x\r\n%s\r\n" % (len(b), b)

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = json.loads(await reader.readexactly(length)) if length else {}
            if not head.startswith(b"POST"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nOK")
                continue
            t = time.monotonic()
            out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"]
            for k in range(TOKENS):
                fin = b'"length"' if k == TOKENS - 1 else b"null"
                out.append(chunk(b'data: {"choices":[{"index":0,"text":" t","finish_reason":%s}],"t":%r}\n\n'
                                 % (fin, t)))
            out.append(chunk(b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":%d}}\n\n' % TOKENS))
            out.append(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            writer.write(b"".join(out))
            stamps.write("%s %r\n" % (body.get("prompt", ""), t))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

try:
    asyncio.run(main())
finally:
    stamps.close()
'''

VLLM_BENCH = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
)


class Stub:
    """The stub server in its own process; `stamps` maps each prompt to the stub's send time."""

    def __init__(self, workdir: Path) -> None:
        from llem.serving.server import free_port

        self.port = free_port()
        self.stamp_file = workdir / f"stamps-{self.port}.txt"
        self.proc = subprocess.Popen([sys.executable, "-c", STUB, str(self.port), str(self.stamp_file), str(TOKENS)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> dict[str, float]:
        self.proc.terminate()
        self.proc.wait(10)
        out = {}
        for line in self.stamp_file.read_text().splitlines():
            prompt, t = line.rsplit(" ", 1)
            out[prompt] = float(t)
        return out


def run_llem(url: str, n: int, concurrency: int | None, rate: float = float("inf")) -> tuple[float, list]:
    from llem.serving import ServingClient, open_loop_schedule

    arrivals = open_loop_schedule(n, 0, TOKENS, rate=rate, burstiness=1.0, seed=0)
    prompts = [f"p{i}" for i in range(n)]
    run = ServingClient(url, "stub", body={"ignore_eos": True}).run(arrivals, prompts, max_concurrency=concurrency)
    ok = [r for r in run.records if r.ok and r.output_tokens == TOKENS]
    assert len(ok) == n, f"{n - len(ok)} requests failed: {[r.error for r in run.records if not r.ok][:3]}"
    return n / run.duration_s, run.records


def run_vllm(url: str, n: int, concurrency: int, workdir: Path, model_dir: Path) -> float:
    prompts = workdir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"v{i}"}) + "\n" for i in range(n)))
    out = workdir / "vllm.json"
    argv = [sys.executable, "-c", VLLM_BENCH, "--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", "stub", "--tokenizer", str(model_dir), "--dataset-name", "custom", "--dataset-path",
            str(prompts), "--custom-output-len", str(TOKENS), "--skip-chat-template", "--num-prompts", str(n),
            "--request-rate", "inf", "--max-concurrency", str(concurrency), "--ignore-eos", "--save-result",
            "--result-dir", str(workdir), "--result-filename", out.name, "--disable-tqdm",
            "--ready-check-timeout-sec", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    res = json.loads(out.read_text())
    return float(res["request_throughput"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop rate of the timestamp check")
    parser.add_argument("--no-vllm", action="store_true", help="llem's client only")
    args = parser.parse_args()
    model_dir = None
    if not args.no_vllm:
        from llem.config import ModelConfig
        from llem.models.resolve import resolve_model_path

        model_dir = Path(resolve_model_path(ModelConfig(name="builtin:tiny")))  # vLLM's client needs a tokenizer
    ours: list[float] = []
    theirs: list[float] = []
    lags_ms: list[float] = []
    paced_rps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for k in range(args.repeats):
            stub = Stub(workdir)
            try:
                rps, _ = run_llem(stub.url, args.requests, args.concurrency)
                if model_dir is not None:
                    theirs.append(run_vllm(stub.url, args.requests, args.concurrency, workdir, model_dir))
                # timestamps: an open loop at the goal rate, where the client is not the bottleneck
                paced, records = run_llem(stub.url, args.requests, None, rate=args.rate)
            finally:
                stamps = stub.stop()
            ours.append(rps)
            paced_rps.append(paced)
            lags_ms += [(r.first_token_s - stamps[f"p{r.index}"]) * 1000 for r in records]
            line = f"repeat {k + 1}: llem {rps:.0f} req/s; open loop at {args.rate:g}/s sustained {paced:.0f} req/s"
            if theirs:
                line += f", vLLM client {theirs[-1]:.0f} req/s, ratio {rps / theirs[-1]:.2f}"
            print(line, flush=True)

    def spread(xs: list[float]) -> str:
        return f"median {statistics.median(xs):.0f} (min {min(xs):.0f}, max {max(xs):.0f})"

    lags_ms.sort()
    q = lambda p: lags_ms[min(len(lags_ms) - 1, int(p * len(lags_ms)))]  # noqa: E731
    print(f"llem client: {spread(ours)} req/s; goal >= 500: {'met' if statistics.median(ours) >= 500 else 'NOT met'}")
    if theirs:
        ratios = [a / b for a, b in zip(ours, theirs)]
        print(f"vLLM client: {spread(theirs)} req/s")
        print(f"ratio llem/vLLM: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f});"
              f" goal >= 1: {'met' if statistics.median(ratios) >= 1 else 'NOT met'}")
    print(f"open loop at {args.rate:g}/s: {spread(paced_rps)} req/s sustained")
    print(f"first-token timestamp - stub's send stamp (open loop): median {q(0.5):.3f} ms, p90 {q(0.9):.3f} ms, "
          f"p99 {q(0.99):.3f} ms, max {lags_ms[-1]:.3f} ms; goal within 1 ms (median)")


if __name__ == "__main__":
    main()
