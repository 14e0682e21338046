"""Web applications over HTTP(S): the executor and its request-script language."""

from executors.http.executor import HttpExecutor

__all__ = ["HttpExecutor"]
