"""Windows hosts over WinRM (PowerShell)."""

from executors.winrm.executor import WinrmExecutor

__all__ = ["WinrmExecutor"]
