"""Safe remote use: who is asking (identity, auth), which files a request may touch (paths), and limits.

Everything that decides whether a request may do something lives in this package, so there is one
place to read and one place to test: handlers in `webui.ui` and `webui.api` ask it, never decide.
"""
