"""How fast the mesh CA issues workload certificates (X.509-SVIDs).

Reports certificates per second for `Authority.issue` and, measured in the same run, for the
bare cryptographic work it cannot avoid (an EC P-256 key pair plus one ECDSA signature over a
minimal certificate), so the ratio shows what our code adds. Fails (exit 1) if issuing 1,000
certificates takes 2 s or more, the bar set for this machine.

    .venv/bin/python bench/bench_ca.py [--count 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from interstate.ca.authority import Authority, utcnow
from interstate.ca.spiffe import workload_id

LIMIT_S = 2.0


def baseline(authority: Authority, count: int) -> float:
    now = utcnow()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench")])
    start = time.perf_counter()
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(authority.cert.subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + timedelta(hours=1))
            .sign(authority.key, hashes.SHA256())
        )
    return time.perf_counter() - start


def ours(authority: Authority, count: int) -> float:
    now = utcnow()
    start = time.perf_counter()
    for i in range(count):
        authority.issue(workload_id("bench.local", f"service-{i}"), timedelta(hours=24), now)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    authority = Authority.create("bench.local", utcnow())
    ours(authority, 50)  # warm up
    base = min(baseline(authority, args.count) for _ in range(3))
    mine = min(ours(authority, args.count) for _ in range(3))
    print(f"issue {args.count} workload certificates: {mine:.3f} s ({args.count / mine:,.0f}/s)")
    print(f"baseline (key pair + bare signature):   {base:.3f} s ({args.count / base:,.0f}/s)")
    print(f"ratio ours/baseline: {mine / base:.2f}x")
    per_thousand = mine * 1000 / args.count
    verdict = "ok" if per_thousand < LIMIT_S else "TOO SLOW"
    print(f"1,000 certificates take {per_thousand:.3f} s (limit {LIMIT_S:.1f} s): {verdict}")
    return 0 if per_thousand < LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
