"""pinproxy benchmarks: the proxy against plain mitmdump, and the pin decision alone.

`python bench/run.py` (end to end, loopback only) and `python bench/decision.py` (the pure
decision) are the entry points; the other modules are their parts.
"""
