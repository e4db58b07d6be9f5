"""The runtime's budget manager and scheduler: global token budget, SLOs, allocation policies.

Not yet implemented (issue 6).
"""
