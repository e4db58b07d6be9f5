"""Certaindex: answer extraction, confidence signals and composable stop rules.

Not yet implemented (issue 3).
"""
