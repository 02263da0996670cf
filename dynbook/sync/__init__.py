"""Synchronization: how workers agree, and what agreeing costs.

``regimes`` (synchronous, local-SGD, asynchronous and Hogwild training of one model),
``processes`` (starting, watching and stopping torch.distributed worker processes) and
``relaxation`` (simulated asynchronous iterations: chaotic relaxation, delayed SGD).
"""
