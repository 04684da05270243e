"""The project's own load benchmark, run as ``unichatd bench`` (installed as ``unichatd_bench``;
the runtime package does not import it).

Each scenario starts a server (unichatd, or the bare relay in ``relay.py``) on a
fresh temporary database holding the rooms it needs, pins it to one core, and drives it
from separate client processes pinned to the other core, over 127.0.0.1.  It prints a
table for people and one JSON line for scripts.

The clients are Python too (websockets + uvloop), so on a 2-core machine they can be
the bottleneck: every result carries ``client_cpu_pct`` and a warning when the client
core was saturated.  ``bench/crosscheck.py`` drives an external C load generator (wsload)
over the same scenarios.

The room layout matches wsload's: rooms 1..R, room r holds users (r-1)*M+1 .. r*M, and
the first S members of each room send.  Idle connection i is user 1000001+i.
"""
