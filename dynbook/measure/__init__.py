"""Measurement: what a run costs and how to read it.

``timing`` (interleaved wall or thread-clock timings, peak memory, caches, thread counts),
``energy`` (NVML and RAPL counters, idle power, the Horowitz and movement models),
``metered`` (time and energy per unit of work with one repeat rule), ``costs`` (FLOP and byte
counters, rooflines) and ``fits`` (log–log slopes, rank correlations, relative errors).
"""
