"""The benchmarks of ``blockipc bench``: the core and throughput suites with the
command's ``main`` (:mod:`.core`) and the cache suite (:mod:`.cache`)."""
