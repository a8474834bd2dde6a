"""What each statement of kamailio.cfg's replay route costs by itself, on warm caches.

`bench/run costs` measures the replay route as a whole, under load: the statements, and the
cache misses and scheduling around them. This separates the first part. A Kamailio with nothing
else to do (TLSF, as the product runs it) gets the benchmark's pager MESSAGE once and runs one
statement on it 200,000 times; a statement's cost is its worker's CPU per run less that of the
same loop without it, the median of five such runs. A request that comes once runs each
statement on cold caches, so these are lower bounds: bench/README.md ("Cost per request against
fair baselines") puts them beside the whole.

    bench/run statements
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from cpmiw.testing import free_port
from cpmiw.testing.fuzz import processes

from .lab import usage

RUNS, UNROLLED = 1000, 200  # a loop of RUNS turns, each with UNROLLED copies of the statement
TIMES = 5  # each statement measured this many times, in turn with the others: the median counts
# An outcome as the plugin writes it (kemi/cpmiw/core/memo.py), for the statements that read one.
OUTCOME = (
    "MESSAGE/cpm.msg/deliver/cpm-to-cpm|0000|||||+15550001234@ims.example.net"
    "|sip:+15550001234@ims.example.net|sip:+15550001234@ims.example.net=1764612345,1000,"
    "+g.3gpp.icsi-ref;ue=127.0.0.1:40000||"
)
CFG = Path(__file__).resolve().parent.parent / "kamailio.cfg"


def route_memo() -> list[str]:
    """The statements of kamailio.cfg's route[MEMO], a line each, as shipped."""
    lines = CFG.read_text().splitlines()
    start = lines.index("route[MEMO] {") + 1
    end = lines.index("}", start)
    return [line.strip() for line in lines[start:end] if not line.strip().startswith("#")]


def shipped(first: str, last: str, close: str = "") -> str:
    """route[MEMO]'s lines from the one starting with `first` to the next starting with `last`,
    on one line, and `close` after them (a block whose end the measurement does not want)."""
    lines = route_memo()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(last))
    return " ".join([*lines[start : end + 1], close]).strip()


STATEMENTS = {
    "nothing (the loop alone)": "",
    "key of stamp, Request-URI, method, source; memo look-up (a miss)": (
        "$vn(k) = $sht(memo=>$shv(cpmiw_changes)|$ru|$rm|$si);"
    ),
    "Accept-Contact (a header type Kamailio knows)": "$vn(k) = $(hdr(Accept-Contact)[*]);",
    "Content-Type (a header type Kamailio knows)": "$vn(k) = $(hdr(Content-Type)[*]);",
    "P-Preferred-Service (present; no header type)": "$vn(k) = $(hdr(P-Preferred-Service)[*]);",
    "P-Asserted-Service (absent; no header type)": "$vn(k) = $(hdr(P-Asserted-Service)[*]);",
    "is_present_hf P-Preferred-Service (present)": (
        'if (is_present_hf("P-Preferred-Service")) { $var(y) = 1; }'
    ),
    "is_present_hf P-Asserted-Service (absent)": (
        'if (is_present_hf("P-Asserted-Service")) { $var(y) = 1; }'
    ),
    "the first key as route[MEMO] builds it; memo look-up (a miss)": shipped(
        "$vn(cpmiw_pps) = $null;", "$vn(cpmiw_outcome) = $sht(memo=>"
    ),
    "devices check, as route[MEMO] has it": shipped(
        "if ($sht(devices=>", "if ($sht(devices=>", "$var(y) = 1; }"
    ),
    "edits check": (
        '$var(e) = $(vn(cpmiw_outcome){s.select,1,|}); if ($var(e) != "0000") { $var(y) = 1; }'
    ),
    "tally": "$var(c) = $shtinc(tally=>$(vn(cpmiw_outcome){s.select,0,|}));",
}
MODULES = ("pv", "sl", "textops", "htable")
TABLES = ("memo=>size=16;", "devices=>size=16;", "tally=>size=8;")


def cfg(statement: str, port: int) -> str:
    loads = "".join(f'loadmodule "{m}.so"\n' for m in MODULES)
    tables = "".join(f'modparam("htable", "htable", "{t}")\n' for t in TABLES)
    body = f"\t\t{statement}\n" * UNROLLED
    summary = OUTCOME.split("|")[8]
    return f"""debug=2
log_stderror=yes
children=1
max_while_loops={RUNS + 1}
listen=udp:127.0.0.1:{port}
{loads}{tables}modparam("pv", "shvset", "cpmiw_changes=s:1764612345-0")
request_route {{
	$vn(cpmiw_outcome) = '{OUTCOME}';
	$sht(devices=>+15550001234@ims.example.net) = '{summary}';
	$var(i) = 0;
	while ($var(i) < {RUNS}) {{
{body}		$var(i) = $var(i) + 1;
	}}
	sl_send_reply("200", "OK");
}}
"""


def message(port: int) -> bytes:
    """The benchmark's pager MESSAGE (bench/scenarios/uac-message.xml), from `port`."""
    return (
        "MESSAGE sip:+15550001234@ims.example.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-statements\r\n"
        f"From: <sip:sender@127.0.0.1:{port}>;tag=1t1\r\n"
        "To: <sip:+15550001234@ims.example.net>\r\n"
        "Call-ID: statements\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        'Accept-Contact: *;+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"\r\n'
        "P-Preferred-Service: urn:urn-7:3gpp-service.ims.icsi.oma.cpm.msg\r\n"
        "Conversation-ID: c1\r\nContribution-ID: m1\r\n"
        "Content-Type: message/cpim\r\nContent-Length: 5\r\n\r\nhello"
    ).encode()


def measure(statement: str, work: Path) -> float:
    """The worker's CPU (ns) per run of `statement`'s loop turn, divided by UNROLLED."""
    port = free_port()
    path = work / f"statement-{port}.cfg"
    path.write_text(cfg(statement, port))
    args = ["kamailio", "-f", str(path), "-DD", "-E", "-x", "tlsf", "-m", "64"]
    with (work / f"kamailio-{port}.log").open("wb") as log:
        kamailio = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(120)
            time.sleep(1.5)  # Kamailio forks its processes
            before = {pid: usage(pid).cpu_ns for pid in processes(kamailio.pid)}
            sock.sendto(message(sock.getsockname()[1]), ("127.0.0.1", port))
            sock.recv(4096)
            # A process forked after the first look counts from its start: a few ms at most.
            spent = max(usage(pid).cpu_ns - before.get(pid, 0) for pid in processes(kamailio.pid))
    finally:
        kamailio.terminate()
        kamailio.wait(10)
    return spent / (RUNS * UNROLLED)


def main() -> None:
    runs: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    with tempfile.TemporaryDirectory(prefix="cpmiw-statements-") as work:
        for _ in range(TIMES):
            for name, statement in STATEMENTS.items():
                runs[name].append(measure(statement, Path(work)))
    costs = {name: statistics.median(ns) for name, ns in runs.items()}
    loop = costs.pop("nothing (the loop alone)")
    print(f"{'statement':60s} ns per run (less the loop's {loop:.0f})")
    for name, ns in costs.items():
        print(f"{name:60s} {ns - loop:8.0f}")


if __name__ == "__main__":
    main()
