"""The pure core: what a request asks for, what a subscriber takes, and what to do about it.

No I/O and no KSR here: data in, decision out. The proxy and the ops tool both call
`routing.plan()`, so the two cannot disagree about a request.
"""
