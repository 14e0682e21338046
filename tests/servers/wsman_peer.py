"""A protocol-level WS-Management peer on a loopback port: a stand-in for a Windows host.

No Windows (and so no real WinRM service or PowerShell) can run on a Linux test machine. This
peer speaks the wire format pywinrm uses — SOAP 1.2 envelopes over HTTP POST to /wsman with HTTP
Basic authentication — for the WinRS shell operations: Create (answers a ShellId selector),
Command (a CommandId), Send (stdin), Receive (base64 rsp:Stream elements and a CommandState Done
with its ExitCode, or the WS-Man operation-timeout fault while a command runs), Signal and Delete.

It decodes ``powershell -EncodedCommand`` (base64 of UTF-16LE) and, for the stdin bootstrap, the
base64 UTF-8 script sent on stdin, records the exact PowerShell it received, and "executes" only
the statements of Keyturn's shipped winrm templates with a tiny interpreter. String literals are
read with PowerShell's own single-quoted string rules (any of ' ‘ ’ ‚ ‛ opens and closes one; two
quote characters in a row stand for the second), so tests see exactly what PowerShell would.
Errors come back the way powershell.exe reports them over WinRM: CLIXML on stderr, exit status 1,
with the "At line:N char:1 / + <source line>" echo (which is where secrets leak on real hosts).

Assumption (documented, not verified against Windows): a shell keeps the logon it was opened with,
as a Windows logon session survives a password change, so a self-change can still read its output.
"""

from __future__ import annotations

import base64
import re
import shutil
import ssl
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

from tests.servers import tls

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
CREATE, DELETE = f"{TRANSFER}/Create", f"{TRANSFER}/Delete"
COMMAND, SEND = f"{SHELL_URI}/Command", f"{SHELL_URI}/Send"
RECEIVE, SIGNAL = f"{SHELL_URI}/Receive", f"{SHELL_URI}/Signal"
OPERATION_TIMEOUT_FAULT = 2150858793
QUOTES = "'\u2018\u2019\u201a\u201b"
START_DEADLINE = 10.0


@dataclass
class Command:
    id: str
    command_line: str
    encoded: str | None  # the -EncodedCommand argument, decoded
    stdin_mode: bool  # WINRS_CONSOLEMODE_STDIN FALSE: input comes through Send
    stdin: bytearray = field(default_factory=bytearray)
    script: str | None = None
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None  # None while running
    delivered: bool = False


@dataclass
class Shell:
    id: str
    user: str
    password: str  # the logon the shell was opened with
    codepage: str
    commands: dict[str, Command] = field(default_factory=dict)


class ScriptError(Exception):
    """A terminating PowerShell error: the message and the category PowerShell would print."""

    def __init__(self, message: str, error_id: str, category: str = "InvalidOperation") -> None:
        super().__init__(message)
        self.error_id = error_id
        self.category = category


class WsmanPeer:
    """The peer and its state. ``users`` maps name → password; ``admins`` may reset others."""

    def __init__(self, path: str = "/wsman", tls_dir: Path | None = None) -> None:
        self.path = path
        # Serves HTTPS with a certificate of a throwaway CA when given a directory for it.
        self.tls = tls.issue(tls_dir) if tls_dir is not None else None
        self.users: dict[str, str] = {}
        self.admins: set[str] = set()
        self.min_length = 1  # the "password policy": shorter new passwords are refused
        self.computer_name = "KEYTURN-PEER"
        self.scripts: list[str] = []  # every script executed, exactly as PowerShell saw it
        self.command_lines: list[str] = []  # every command line, as a process listing shows it
        self.actions: list[str] = []  # every WS-Man action received, in order
        self.failed_logins = 0
        self.hang = False  # commands never finish: Receive answers operation timeouts
        self.drop_on_receive = False  # close the connection instead of answering Receive
        self.shells: dict[str, Shell] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import socket

        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the WS-Man peer did not start listening") from None
                time.sleep(0.01)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def client_options(self) -> dict[str, object]:
        """Device options of a verified HTTPS session with Basic authentication."""
        assert self.tls is not None, "this peer serves plain http"
        return {"transport": "basic", "scheme": "https", "ca_file": str(self.tls.ca)}

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the WS-Man peer is not running")
        return int(self._server.server_address[1])

    def reset(self) -> None:
        with self._lock:
            self.users.clear()
            self.admins.clear()
            self.scripts.clear()
            self.command_lines.clear()
            self.actions.clear()
            self.shells.clear()
            self.min_length = 1
            self.failed_logins = 0
            self.hang = self.drop_on_receive = False

    # -- authentication -------------------------------------------------------------------

    def authenticate(self, header: str | None, shell_id: str | None) -> tuple[str, str] | None:
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        with self._lock:
            if self.users.get(user) == password:
                return user, password
            shell = self.shells.get(shell_id or "")
            if shell is not None and (shell.user, shell.password) == (user, password):
                return user, password  # the shell's logon outlives a password change
            self.failed_logins += 1
        return None

    # -- operations -----------------------------------------------------------------------

    def handle(self, body: bytes, user: str, password: str) -> tuple[int, str]:
        root = ET.fromstring(body)
        header = _find(root, "s:Header")
        action = _text(header, "a:Action")
        message_id = _text(header, "a:MessageID")
        self.actions.append(action.rsplit("/", 1)[-1])
        selector = header.find("w:SelectorSet/w:Selector[@Name='ShellId']", NS)
        shell_id = selector.text if selector is not None else None
        timeout = _seconds(header.findtext("w:OperationTimeout", "PT20S", NS))
        reply = Reply(action, message_id)
        if action == CREATE:
            return 200, self._create(root, user, password, reply)
        shell = self.shells.get(shell_id or "")
        if shell is None or shell.user != user:
            return 500, reply.fault("s:Sender", "w:InvalidSelectors", "the shell does not exist")
        body_node = _find(root, "s:Body")
        if action == COMMAND:
            return 200, self._command(shell, header, body_node, reply)
        if action == SEND:
            return 200, self._send(shell, body_node, user, reply)
        if action == RECEIVE:
            return self._receive(shell, body_node, reply, timeout)
        if action == SIGNAL:
            signal = _find(body_node, "rsp:Signal")
            shell.commands.pop(signal.get("CommandId", ""), None)
            return 200, reply.envelope("<rsp:SignalResponse/>")
        if action == DELETE:
            with self._lock:
                self.shells.pop(shell.id, None)
            return 200, reply.envelope("")
        return 500, reply.fault("s:Sender", "w:ActionNotSupported", f"unknown action {action}")

    def _create(self, root: ET.Element, user: str, password: str, reply: Reply) -> str:
        options = {
            option.get("Name"): option.text
            for option in root.iterfind(".//w:OptionSet/w:Option", NS)
        }
        shell = Shell(
            str(uuid.uuid4()).upper(), user, password, options.get("WINRS_CODEPAGE") or "437"
        )
        with self._lock:
            self.shells[shell.id] = shell
        return reply.envelope(
            "<x:ResourceCreated>"
            f"<a:Address>http://127.0.0.1:{self.port}{self.path}</a:Address>"
            "<a:ReferenceParameters>"
            f"<w:ResourceURI>{SHELL_URI}/cmd</w:ResourceURI>"
            f'<w:SelectorSet><w:Selector Name="ShellId">{shell.id}</w:Selector></w:SelectorSet>'
            "</a:ReferenceParameters></x:ResourceCreated>"
            f"<rsp:Shell><rsp:ShellId>{shell.id}</rsp:ShellId>"
            f"<rsp:Owner>{escape(user)}</rsp:Owner></rsp:Shell>"
        )

    def _command(self, shell: Shell, header: ET.Element, body: ET.Element, reply: Reply) -> str:
        options = {
            option.get("Name"): option.text
            for option in header.iterfind("w:OptionSet/w:Option", NS)
        }
        executable = _text(body, "rsp:CommandLine/rsp:Command")
        arguments = [node.text or "" for node in body.iterfind("rsp:CommandLine/rsp:Arguments", NS)]
        words = " ".join(arguments).split()
        command = Command(
            id=str(uuid.uuid4()).upper(),
            command_line=" ".join([executable, *words]),
            encoded=_encoded_command(words),
            stdin_mode=options.get("WINRS_CONSOLEMODE_STDIN") == "FALSE",
        )
        self.command_lines.append(command.command_line)
        shell.commands[command.id] = command
        if not command.stdin_mode or not _is_bootstrap(command.encoded):
            self._execute(shell, command, command.encoded)
        return reply.envelope(
            f"<rsp:CommandResponse><rsp:CommandId>{command.id}</rsp:CommandId>"
            "</rsp:CommandResponse>"
        )

    def _send(self, shell: Shell, body: ET.Element, user: str, reply: Reply) -> str:
        stream = _find(body, "rsp:Send/rsp:Stream")
        command = shell.commands[stream.get("CommandId", "")]
        command.stdin += base64.b64decode(stream.text or "")
        if stream.get("End") == "true" and command.exit_code is None:
            # The bootstrap: $input | Out-String, base64 → UTF-8 → a script block, and run it.
            script = base64.b64decode(bytes(command.stdin)).decode("utf-8")
            self._execute(shell, command, script)
        return reply.envelope("<rsp:SendResponse/>")

    def _receive(
        self, shell: Shell, body: ET.Element, reply: Reply, timeout: float
    ) -> tuple[int, str]:
        if self.drop_on_receive:
            raise ConnectionAbortedError("peer told to drop the connection")
        desired = _find(body, "rsp:Receive/rsp:DesiredStream")
        command = shell.commands[desired.get("CommandId", "")]
        if command.exit_code is None or self.hang:
            time.sleep(min(timeout, 1.0))
            return 500, reply.timeout_fault()
        cid = command.id
        streams = "".join(
            f'<rsp:Stream Name="{name}" CommandId="{cid}">{_b64(data)}</rsp:Stream>'
            for name, data in (("stdout", command.stdout), ("stderr", command.stderr))
            if data and not command.delivered
        )
        command.delivered = True
        ends = "".join(
            f'<rsp:Stream Name="{name}" CommandId="{cid}" End="true"></rsp:Stream>'
            for name in ("stdout", "stderr")
        )
        state = (
            f'<rsp:CommandState CommandId="{cid}" State="{SHELL_URI}/CommandState/Done">'
            f"<rsp:ExitCode>{command.exit_code}</rsp:ExitCode></rsp:CommandState>"
        )
        return 200, reply.envelope(
            f"<rsp:ReceiveResponse>{streams}{ends}{state}</rsp:ReceiveResponse>"
        )

    # -- PowerShell -----------------------------------------------------------------------

    def _execute(self, shell: Shell, command: Command, script: str | None) -> None:
        if script is None:
            command.stderr = f"'{command.command_line}' is not recognized as a command\r\n"
            command.exit_code = 1
            return
        command.script = script
        self.scripts.append(script)
        interpreter = Interpreter(self, shell.user)
        try:
            interpreter.run(script)
        except ScriptError as exc:
            command.stdout = interpreter.output
            command.stderr = _clixml_error(exc, interpreter.line, interpreter.source_line)
            command.exit_code = 1
            return
        except SystemExit as exc:
            command.stdout = interpreter.output
            command.exit_code = int(exc.code or 0)
            return
        command.stdout = interpreter.output
        command.exit_code = 0


class Interpreter:
    """Exactly the statements of the shipped templates (and the executor's preamble/bootstrap).

    Each string literal is lexed first and replaced by a placeholder, so a statement's shape is
    matched without any literal's content: an injected ``'; Remove-LocalUser …`` stays a string.
    """

    def __init__(self, peer: WsmanPeer, user: str) -> None:
        self.peer = peer
        self.user = user
        self.output = ""
        self.line = 0
        self.source_line = ""
        self.variables: dict[str, str] = {}

    def run(self, script: str) -> None:
        skeleton, literals = lex(script)
        sources = script.split("\n")
        for number, line in enumerate(skeleton.split("\n"), start=1):
            self.line = number
            self.source_line = sources[number - 1] if number <= len(sources) else line
            statement = line.strip()
            if not statement or statement.startswith("#"):
                continue
            self._statement(statement, literals)

    def _statement(self, statement: str, literals: list[str]) -> None:
        for pattern, action in self._grammar():
            match = re.fullmatch(pattern, statement, re.IGNORECASE)
            if match:
                values = [literals[int(index)] for index in match.groups()]
                action(*values)
                return
        word = statement.split()[0]
        raise ScriptError(
            f"The term '{word}' is not recognized as the name of a cmdlet, function, script "
            "file, or operable program.",
            "CommandNotFoundException",
            "ObjectNotFound",
        )

    def _grammar(self) -> list[tuple[str, Callable[..., None]]]:
        s = r"\x00(\d+)\x00"  # a string literal
        secure = rf"\(ConvertTo-SecureString {s} -AsPlainText -Force\)"
        return [
            (rf"\$ErrorActionPreference = {s}; \$ProgressPreference = {s}", self._preferences),
            (rf"Set-LocalUser -Name {s} -Password {secure}", self._set_local_user),
            (rf"Set-ADAccountPassword -Identity {s} -Reset -NewPassword {secure}", self._set_ad),
            (
                rf"\$account = \[ADSI\]\({s} \+ \$env:COMPUTERNAME \+ {s} \+ {s} \+ {s}\)",
                self._adsi,
            ),
            (rf"\$account\.ChangePassword\({s}, {s}\)", self._change_password),
            (rf"\$expected = {s} -replace {s}, {s} -replace {s}, {s}", self._expected),
            (
                r'if \(\$env:USERNAME -ne \$expected\) \{ throw "logged in as \$env:USERNAME, '
                r'expected \$expected" \}',
                self._check_expected,
            ),
            (r"Write-Output \$env:USERNAME", lambda: self._write(self.user)),
            (rf"Write-Output {s}", self._write),
            (r"exit (\d+)", lambda code: self._exit(code)),
        ]

    # statements

    def _preferences(self, error_action: str, progress: str) -> None:
        self.variables["ErrorActionPreference"] = error_action
        self.variables["ProgressPreference"] = progress

    def _set_local_user(self, name: str, password: str) -> None:
        self._require_admin("Set-LocalUser")
        self._reset(name, password, "Set-LocalUser", f"User {name} was not found.")

    def _set_ad(self, identity: str, password: str) -> None:
        self._require_admin("Set-ADAccountPassword")
        self._reset(
            identity,
            password,
            "Set-ADAccountPassword",
            f"Cannot find an object with identity: '{identity}'",
        )

    def _adsi(self, prefix: str, slash: str, name: str, suffix: str) -> None:
        if (prefix, slash, suffix) != ("WinNT://", "/", ",user"):
            raise ScriptError("The ADSI path is not valid.", "COMException")
        self.variables["account"] = name

    def _change_password(self, old: str, new: str) -> None:
        name = self.variables.get("account")
        with self.peer._lock:
            if name is None or name not in self.peer.users:
                raise ScriptError("The user name could not be found.", "COMException")
            if self.peer.users[name] != old:
                raise ScriptError(
                    'Exception calling "ChangePassword" with "2" argument(s): "The specified '
                    'network password is not correct."',
                    "DotNetMethodException",
                )
            self._policy(new, 'Exception calling "ChangePassword" with "2" argument(s): ')
            self.peer.users[name] = new

    def _expected(self, name: str, pattern1: str, repl1: str, pattern2: str, repl2: str) -> None:
        value = re.sub(pattern1, repl1, name)
        self.variables["expected"] = re.sub(pattern2, repl2, value)

    def _check_expected(self) -> None:
        expected = self.variables.get("expected", "")
        if self.user.casefold() != expected.casefold():
            raise ScriptError(f"logged in as {self.user}, expected {expected}", "RuntimeException")

    def _write(self, text: str) -> None:
        self.output += text + "\r\n"

    def _exit(self, code: str) -> None:
        raise SystemExit(int(code))

    # helpers

    def _require_admin(self, cmdlet: str) -> None:
        if self.user not in self.peer.admins:
            raise ScriptError(f"{cmdlet} : Access denied.", "AccessDenied", "PermissionDenied")

    def _reset(self, name: str, password: str, cmdlet: str, missing: str) -> None:
        with self.peer._lock:
            if name not in self.peer.users:
                raise ScriptError(f"{cmdlet} : {missing}", "UserNotFound", "ObjectNotFound")
            self._policy(password, f"{cmdlet} : ")
            self.peer.users[name] = password

    def _policy(self, password: str, prefix: str) -> None:
        if len(password) < self.peer.min_length:
            raise ScriptError(
                f"{prefix}The password does not meet the password policy requirements. Check "
                "the minimum password length, password complexity and password history "
                "requirements.",
                "InvalidPassword",
            )


def lex(script: str) -> tuple[str, list[str]]:
    """Replace each PowerShell single-quoted string literal with ``\\x00<index>\\x00``.

    PowerShell's rules: any of ' ‘ ’ ‚ ‛ opens a literal and any of them closes it, unless the next
    character is also one of them, in which case the pair stands for that second character.
    """
    out: list[str] = []
    literals: list[str] = []
    i = 0
    while i < len(script):
        char = script[i]
        if char == '"':  # double-quoted strings (only in the verify template): copied as is
            end = script.index('"', i + 1)
            out.append(script[i : end + 1])
            i = end + 1
            continue
        if char == "#" and (i == 0 or script[i - 1] == "\n" or script[i - 1].isspace()):
            end = script.find("\n", i)
            end = len(script) if end < 0 else end
            out.append(script[i:end])
            i = end
            continue
        if char not in QUOTES:
            out.append(char)
            i += 1
            continue
        value: list[str] = []
        i += 1
        while True:
            if i >= len(script):
                raise ScriptError(
                    "The string is missing the terminator: '.", "TerminatorExpectedAtEndOfString"
                )
            char = script[i]
            if char in QUOTES:
                if i + 1 < len(script) and script[i + 1] in QUOTES:
                    value.append(script[i + 1])
                    i += 2
                    continue
                i += 1
                break
            value.append(char)
            i += 1
        out.append(f"\x00{len(literals)}\x00")
        # A literal spanning lines keeps the line count: later lines must keep their numbers.
        out.append("\n" * "".join(value).count("\n"))
        literals.append("".join(value))
    return "".join(out), literals


def _clixml_error(exc: ScriptError, line: int, source: str) -> str:
    """The error as powershell.exe writes it to a redirected stderr: CLIXML Error strings."""
    text = (
        f"{exc}\r\nAt line:{line} char:1\r\n+ {source}\r\n+ ~~~~~~~~~~~~~~~~~~~~\r\n"
        f"    + CategoryInfo          : {exc.category}: (:) [], {exc.error_id}\r\n"
        f"    + FullyQualifiedErrorId : {exc.error_id}\r\n \r\n"
    )
    pieces = "".join(
        f'<S S="Error">{_clixml_escape(part)}</S>' for part in text.splitlines(keepends=True)
    )
    return (
        "#< CLIXML\r\n"
        '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        f"{pieces}</Objs>"
    )


def _clixml_escape(text: str) -> str:
    text = text.replace("_x", "_x005F_x")
    text = text.replace("\r", "_x000D_").replace("\n", "_x000A_")
    return escape(text)


# -- SOAP plumbing ----------------------------------------------------------------------------


class Reply:
    def __init__(self, action: str, relates_to: str) -> None:
        self.action = action
        self.relates_to = relates_to

    def envelope(self, body: str, action: str | None = None) -> str:
        namespaces = " ".join(f'xmlns:{prefix}="{uri}"' for prefix, uri in NS.items())
        return (
            f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xml:lang="en-US" {namespaces}>'
            "<s:Header>"
            f"<a:Action>{action or self.action + 'Response'}</a:Action>"
            f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
            "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
            f"<a:RelatesTo>{self.relates_to}</a:RelatesTo>"
            f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        )

    def fault(self, code: str, subcode: str, reason: str, wsman_code: int = 5) -> str:
        return self.envelope(
            "<s:Fault>"
            f"<s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value>"
            "</s:Subcode></s:Code>"
            f'<s:Reason><s:Text xml:lang="en-US">{escape(reason)}</s:Text></s:Reason>'
            '<s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"'
            f' Code="{wsman_code}" Machine="127.0.0.1"><f:Message>{escape(reason)}</f:Message>'
            "</f:WSManFault></s:Detail></s:Fault>",
            action="http://schemas.dmtf.org/wbem/wsman/1/wsman/fault",
        )

    def timeout_fault(self) -> str:
        return self.fault(
            "s:Receiver",
            "w:TimedOut",
            "The WS-Management service cannot complete the operation within the time specified "
            "in OperationTimeout.",
            OPERATION_TIMEOUT_FAULT,
        )


def _handler(peer: WsmanPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like requests' pooled connection expects

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path != peer.path:
                self._answer(404, "")
                return
            shell_id = _shell_id(body)
            login = peer.authenticate(self.headers.get("Authorization"), shell_id)
            if login is None:
                self._answer(401, "", {"WWW-Authenticate": 'Basic realm="WSMAN"'})
                return
            try:
                status, text = peer.handle(body, *login)
            except ConnectionAbortedError:
                self.close_connection = True
                self.connection.close()
                return
            self._answer(status, text)

        def _answer(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
            data = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: tests assert on the peer's state, not its access log

    return Handler


def _shell_id(body: bytes) -> str | None:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    selector = root.find(".//w:SelectorSet/w:Selector[@Name='ShellId']", NS)
    return selector.text if selector is not None else None


def _find(node: ET.Element, path: str) -> ET.Element:
    found = node.find(path, NS)
    if found is None:
        raise ValueError(f"malformed WS-Man message: no {path}")
    return found


def _text(node: ET.Element, path: str) -> str:
    return _find(node, path).text or ""


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"PT(\d+(?:\.\d+)?)S", duration)
    return float(match.group(1)) if match else 20.0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _encoded_command(words: list[str]) -> str | None:
    """The -EncodedCommand argument (any prefix PowerShell accepts: -e, -ec, -enc…), decoded."""
    for index, word in enumerate(words[:-1]):
        lowered = word.lower()
        if lowered.startswith("-e") and "-encodedcommand".startswith(lowered):
            return base64.b64decode(words[index + 1]).decode("utf-16-le")
    return None


def _is_bootstrap(script: str | None) -> bool:
    return script is not None and "$input | Out-String" in script


@contextmanager
def running_peer() -> Iterator[WsmanPeer]:
    """The body of the fixtures that the executor tests and the end-to-end tests each declare:
    a peer serving HTTPS."""
    directory = Path(tempfile.mkdtemp(prefix="keyturn-wsman-"))
    peer = WsmanPeer(tls_dir=directory)
    peer.start()
    try:
        yield peer
    finally:
        peer.close()
        shutil.rmtree(directory, ignore_errors=True)
