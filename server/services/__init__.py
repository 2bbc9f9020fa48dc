"""Domain logic of the control plane; routers call these with keyword arguments.

A service takes the caller's Session and only flushes: the caller commits (see
db.py). The few that span several transactions (a long poll, a follow stream,
a streamed body) take the Database and run each step in its own transaction.
"""
