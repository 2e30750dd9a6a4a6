"""``provision bench``: measure the choreography against the in-process baseline.

Latency (sequential provisions), throughput (a burst of requests), the workers' footprint
(RSS and CPU, idle and under load) and where the time of each hop goes. ``stats`` holds the
pure arithmetic; the other modules drive the real broker, database and worker processes.
"""
