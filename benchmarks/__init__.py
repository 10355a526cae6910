"""Benchmarks for skialith-langgraph: ``python -m benchmarks --help``.

Measures, side by side in one run and interleaved in blocks so that machine drift hits every
contender alike (DESIGN.md section 1.6):

* per-operation latency (``aput``, ``aput_writes``, ``aget_tuple``) of Skialith and its peers,
  next to the floors: a bare JetStream publish + PubAck and a raw MySQL ``INSERT``;
* a 5-node LangGraph chain with ``durability="sync"`` and ``"async"``, on fresh threads and on
  one long thread, as a ratio to ``InMemorySaver``;
* ``aput`` throughput with 1, 8 and 64 concurrent agents;
* projector throughput into MariaDB and projection lag at a fixed offered load.

Every table states the durability settings it ran with, read back from the servers.
The benchmark starts its own nats-server(s) and creates (and drops) its own databases.
"""
