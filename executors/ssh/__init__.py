"""Linux and Unix hosts over SSH: the executor, its script language and the session that runs it."""

from executors.ssh.executor import SshExecutor

__all__ = ["SshExecutor"]
