"""Time Keylime's own IMA list processing on one list, once.

Run by scripts/bench-keylime inside a virtualenv with Keylime installed.
Each run is its own process, so that its peak RSS covers one measurement.

The function timed is keylime.ima.ima.process_measurement_list, which the
Keylime 7.14.3 verifier calls through Tpm.__check_ima (keylime/tpm/tpm_main.py).
Its arguments there are the agent's measurement list as one string split on
newlines, the agent's AgentAttestState, the runtime policy, the quoted PCR 10
value as hex and the quote's hash algorithm. For each line it parses the
ASCII entry and rebuilds the template data. It then checks the logged SHA-1
template digest against that data, extends the running PCR 10 value in the
quoted bank, and checks the entry against the runtime policy if there is one.

Modes:

- full: read the whole ASCII list as text and process it in one call from
  a fresh AgentAttestState, against the PCR values after the last record;
- incremental: one call per chunk of pcrs.json, each with only that chunk's
  lines and the PCR values after it. The AgentAttestState carries the next
  entry and the running PCR value between calls in memory, as the verifier's
  AgentAttestStates map does between rounds. The verifier also writes
  next_ima_ml_entry to its database, which is not part of this measurement.

`run` prints one JSON line; `summarize` turns a file of them into a table.
"""

import argparse
import json
import logging
import sys
import time
from typing import Any, Dict, List, Optional, Tuple


def status_kib(field: str) -> Optional[int]:
    """Return a /proc/self/status field in KiB (VmHWM, VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0 and later)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def chunk_offsets(path: str, ends: List[int]) -> List[Tuple[int, int]]:
    """Return the byte range of each chunk, the chunks ending at the given line counts."""
    ranges = []
    start = 0
    offset = 0
    line = 0
    remaining_ends = iter(ends)
    end = next(remaining_ends, None)
    with open(path, "rb") as listing:
        for text in listing:
            offset += len(text)
            line += 1
            if line == end:
                ranges.append((start, offset))
                start = offset
                end = next(remaining_ends, None)
    if len(ranges) != len(ends):
        sys.exit(f"{path}: {line} lines, fewer than the {ends[-1]} that pcrs.json names")
    return ranges


def allow_everything(path: str) -> Dict[str, Any]:
    """Build a runtime policy that allows every file digest in the list."""
    from keylime.ima import ima  # pylint: disable=import-outside-toplevel

    policy = ima.empty_policy()
    digests: Dict[str, List[str]] = policy["digests"]
    with open(path, encoding="utf-8") as listing:
        for line in listing:
            # PCR, template digest, template name, algo:digest, path
            _, _, _, file_digest, name = line.rstrip("\n").split(" ", 4)
            allowed = digests.setdefault(name, [])
            hex_digest = file_digest.split(":", 1)[1]
            if hex_digest not in allowed:
                allowed.append(hex_digest)
    return policy


def flip(text: str, line_number: int) -> str:
    """Change one hex digit of the file digest on the given line (0-based)."""
    start = 0
    for _ in range(line_number):
        start = text.index("\n", start) + 1
    colon = text.index(":", start)
    digit = text[colon + 1]
    replacement = "1" if digit == "0" else "0"
    return text[: colon + 1] + replacement + text[colon + 2 :]


def run(args: argparse.Namespace) -> None:
    """Time one measurement and print its figures as one JSON line."""
    # Keylime logs through its own config files, which a pip install lacks.
    logging.basicConfig(level=logging.WARNING)
    from keylime.agentstates import AgentAttestState  # pylint: disable=import-outside-toplevel
    from keylime.common.algorithms import Hash  # pylint: disable=import-outside-toplevel
    from keylime.ima import ima  # pylint: disable=import-outside-toplevel

    with open(args.pcrs, encoding="ascii") as pcrs_file:
        pcrs = json.load(pcrs_file)
    rounds = pcrs["rounds"]
    records = pcrs["records"]
    bank = Hash(args.bank)

    policy = allow_everything(args.list) if args.policy == "all" else None
    if args.mode == "incremental":
        ranges = chunk_offsets(args.list, [r["end"] for r in rounds])

    peak_reset = reset_peak_rss()
    rss_before = status_kib("VmRSS")
    state = AgentAttestState("bench-agent")
    per_round: List[float] = []
    read_seconds = 0.0
    events: List[str] = []
    ok = True
    cpu_start = time.process_time()
    start = time.perf_counter()
    if args.mode == "full":
        with open(args.list, "rb") as listing:
            text = listing.read().decode("utf-8")
        read_seconds = time.perf_counter() - start
        if args.flip_line is not None:
            text = flip(text, args.flip_line)
        _, failure = ima.process_measurement_list(
            state, text.split("\n"), policy, pcrval=rounds[-1][args.bank], hash_alg=bank
        )
        del text
        if failure:
            ok = False
            events = failure.get_event_ids()
        elif state.get_next_ima_ml_entry() != records:
            ok = False
            events = [f"next entry {state.get_next_ima_ml_entry()}, expected {records}"]
    else:
        with open(args.list, "rb") as listing:
            for (first, last), expected in zip(ranges, rounds):
                round_start = time.perf_counter()
                listing.seek(first)
                chunk = listing.read(last - first).decode("utf-8")
                read_seconds += time.perf_counter() - round_start
                _, failure = ima.process_measurement_list(
                    state, chunk.split("\n"), policy, pcrval=expected[args.bank], hash_alg=bank
                )
                per_round.append(time.perf_counter() - round_start)
                if failure:
                    ok = False
                    events = failure.get_event_ids()
                    break
                if state.get_next_ima_ml_entry() != expected["end"]:
                    ok = False
                    events = [f"next entry {state.get_next_ima_ml_entry()}, expected {expected['end']}"]
                    break
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start

    result = {
        "mode": args.mode,
        "bank": args.bank,
        "policy": args.policy,
        "records": records,
        "ok": ok,
        "events": sorted(set(events)),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "read_seconds": read_seconds,
        "per_round": per_round,
        "peak_rss_kib": status_kib("VmHWM"),
        "peak_reset": peak_reset,
        "rss_before_kib": rss_before,
        "policy_paths": len(policy["digests"]) if policy else 0,
    }
    print(json.dumps(result))


def mib(kib: Optional[int]) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f}"


def summarize(args: argparse.Namespace) -> None:
    """Print the best run of each measurement as a Markdown table row."""
    best: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
    peaks: Dict[Tuple[str, str, str], int] = {}
    with open(args.results, encoding="utf-8") as results:
        for line in results:
            result = json.loads(line)
            key = (result["mode"], result["bank"], result["policy"])
            if key not in best or result["seconds"] < best[key]["seconds"]:
                best[key] = result
            peaks[key] = max(peaks.get(key, 0), result["peak_rss_kib"] or 0)
    print(
        "| measurement | bank | policy | seconds | CPU seconds | records/s | per round (ms) | reading the text (s) "
        "| peak RSS (MiB) | RSS before (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (mode, bank, policy), result in best.items():
        per_round = ""
        if result["per_round"]:
            ordered = sorted(result["per_round"])
            mean = result["seconds"] * 1e3 / len(ordered)
            per_round = f"{mean:.1f} / {ordered[len(ordered) // 2] * 1e3:.1f} / {ordered[-1] * 1e3:.1f}"
        whole = "" if result["peak_reset"] else " (whole process)"
        print(
            f"| {mode} | {bank} | {policy} | {result['seconds']:.2f} | {result['cpu_seconds']:.2f} "
            f"| {result['records'] / result['seconds']:.0f} "
            f"| {per_round} | {result['read_seconds']:.2f} | {mib(peaks[(mode, bank, policy)])}{whole} "
            f"| {mib(result['rss_before_kib'])} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="time one measurement, print one JSON line")
    run_parser.add_argument("--list", required=True, help="ASCII measurement list")
    run_parser.add_argument("--pcrs", required=True, help="pcrs.json written by the imalog bench")
    run_parser.add_argument("--bank", choices=["sha1", "sha256"], required=True)
    run_parser.add_argument("--mode", choices=["full", "incremental"], required=True)
    run_parser.add_argument(
        "--policy", choices=["none", "all"], default="none", help="no runtime policy, or one allowing every digest"
    )
    run_parser.add_argument("--flip-line", type=int, help="full mode: alter one digit on this line (0-based)")
    summarize_parser = commands.add_parser("summarize", help="print the best run of each measurement as a Markdown table")
    summarize_parser.add_argument("results", help="file of JSON lines printed by run")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        summarize(args)


if __name__ == "__main__":
    main()
