"""``floodgate bench``: Floodgate measuring itself the way its users would.

One module per scenario (``spike``, ``accept``, ``pipeline``, ``notify``, ``memory``,
``rawkafka``, ``baseline`` with the ``naive`` endpoint behind ``nginx``), pure helpers
(``stats``, ``arrivals``, ``targets``), the edges that touch the stack (``load``, ``probes``,
``stacks``, ``profiling``), and the output (``plots``, ``report``). ``runner`` ties them together
with a progress line; ``floodgate bench`` / ``make bench`` call it.
"""
