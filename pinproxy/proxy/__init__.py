"""Everything that touches mitmproxy: the addon, the embedded master, workers, the CA.

The pure core (pins, pinset, loader, policy, report) imports none of this; ruff's banned-api
rule keeps mitmproxy and pyOpenSSL imports inside this package (and the live probe).
"""
