"""Reasoning programs (self-consistency, best-of-N, Rebase, MCTS, Dynasor-CoT) as coroutines.

Built on :mod:`dynasor_client.endpoints`; not yet implemented (issue 5).
"""
