"""The benchmarks of ``blockipc bench``, kept apart from the runtime: the harness the
suites share (:mod:`.harness`: processes, pipes, pinning, statistics, the report), the
core and throughput suites with the command's ``main`` (:mod:`.core`) and the cache
suite (:mod:`.cache`). The suites import the harness's public names and reach blockipc
through its public API only; nothing else in blockipc imports this package except
``blockipc bench`` (``_cli``), for ``core.main``."""
