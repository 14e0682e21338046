"""Password generation per policy, with the ``secrets`` module."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

SYMBOLS = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ "


@dataclass(frozen=True)
class PasswordRules:
    length: int = 24
    lowercase: bool = True
    uppercase: bool = True
    digits: bool = True
    symbols: bool = True
    exclude: str = ""

    def classes(self) -> list[str]:
        """The character classes in use, each less the excluded characters; empty ones dropped."""
        chosen = [
            (self.lowercase, string.ascii_lowercase),
            (self.uppercase, string.ascii_uppercase),
            (self.digits, string.digits),
            (self.symbols, SYMBOLS),
        ]
        return [
            "".join(c for c in chars if c not in self.exclude) for wanted, chars in chosen if wanted
        ]

    def problem(self) -> str | None:
        """Why these rules cannot produce a password, or None if they can."""
        classes = self.classes()
        if not classes:
            return "enable at least one character class (lowercase, uppercase, digits, symbols)"
        if any(not c for c in classes):
            return "'exclude' removes every character of an enabled class"
        if self.length < len(classes):
            return f"length {self.length} is shorter than the {len(classes)} required classes"
        if self.length > 1024:
            return "length must be at most 1024"
        return None

    def violation(self, password: str) -> str | None:
        """Why ``password`` breaks these rules, or None if it fits. The answer never quotes
        the password or any of its characters: it goes back to whoever supplied it, and to
        logs."""
        if len(password) < self.length:
            return f"is shorter than the policy's length of {self.length} characters"
        if len(password) > 1024:
            return "is longer than 1024 characters"
        if any(not c.isprintable() for c in password):
            return "contains a control or non-printable character"
        wanted = {
            "lowercase letters": (self.lowercase, string.ascii_lowercase),
            "uppercase letters": (self.uppercase, string.ascii_uppercase),
            "digits": (self.digits, string.digits),
            "symbols": (self.symbols, SYMBOLS),
        }
        for name, (enabled, chars) in wanted.items():
            present = any(c in chars for c in password)
            if enabled and not present:
                return f"has no {name}, which the policy requires"
            if not enabled and present:
                return f"has {name}, which the policy leaves out"
        if any(c not in "".join(self.classes()) for c in password):
            return "has characters the policy excludes or does not allow"
        return None


def generate_password(rules: PasswordRules) -> str:
    """A password with at least one character of every enabled class, uniformly shuffled."""
    problem = rules.problem()
    if problem:
        raise ValueError(problem)
    classes = rules.classes()
    alphabet = "".join(classes)
    chars = [secrets.choice(c) for c in classes]
    chars += [secrets.choice(alphabet) for _ in range(rules.length - len(chars))]
    # Fisher-Yates with a CSPRNG, so the guaranteed characters are not always first.
    for i in range(len(chars) - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)
