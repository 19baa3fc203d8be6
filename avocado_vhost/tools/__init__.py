"""
For scripts and people rather than tests: the benchmarks' shared helper
(:mod:`.bench`), message-sequence charts (:mod:`.chart`) and one VM with a
back-end outside any runner (:mod:`.standalone`).
"""
