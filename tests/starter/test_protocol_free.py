"""The HTTP starter knows no protocol library: a process that serves the API imports none of
them until a request needs one (making or reading an SSH key, say), so it does not hold them."""

from __future__ import annotations

import json

from tests.python_process import run_python

PROTOCOLS = ("asyncssh", "psycopg", "pymysql", "winrm", "ldap3")

IMPORTED = """
import json, sys
import starter.app, starter.cli
from executors.shipped import shipped_templates
shipped_templates()  # what create_app seeds
print(json.dumps([name for name in sys.argv[1:] if name in sys.modules]))
"""


def test_the_api_imports_no_protocol_library() -> None:
    assert json.loads(run_python(IMPORTED, *PROTOCOLS).stdout) == []
