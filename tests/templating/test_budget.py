"""Rendering has a budget: a template that loops too long or produces too much is stopped with a
clear error naming its line, and normal templates are untouched."""

from __future__ import annotations

import threading
import time

import pytest

from templating import TemplateContext, TemplateSyntaxProblem, render
from templating.budget import MAX_OUTPUT, MAX_SECONDS, Budget, BudgetExceeded, watchdog

CONTEXT = TemplateContext("app", "old", "new", "host", "127.0.0.1", 22)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        # Nested loops with no output: only the deadline stops them.
        (
            "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
            "longer than its budget",
        ),
        # No range(), no output: only the watchdog stops it.
        (
            "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
            "longer than its budget",
        ),
        ("{{ 'x' * 100000000 }}", f"more than {MAX_OUTPUT} characters"),
        ("{{ [1] * 100000000 }}", f"more than {MAX_OUTPUT} characters"),
        ("{{ 99 ** 99999999 }}", "too large a number"),
        ("{% for i in range(99999) %}{{ new_password * 100 }}{% endfor %}", "characters"),
    ],
)
def test_a_template_over_budget_is_stopped(template: str, message: str) -> None:
    began = time.monotonic()
    with pytest.raises(TemplateSyntaxProblem, match=message) as stopped:
        render(template, CONTEXT, line=3)
    assert stopped.value.line == 3
    assert time.monotonic() - began < MAX_SECONDS + 3  # stopped near its deadline


def test_templates_within_budget_render() -> None:
    assert render("{{ 'ab' * 3 }} {{ 2 ** 10 }}", CONTEXT) == "ababab 1024"
    assert render("{% for i in range(3) %}{{ i }}{% endfor %}", CONTEXT) == "012"


def test_the_watchdog_interrupts_a_loop_and_never_fires_after_its_block() -> None:
    with pytest.raises(BudgetExceeded), watchdog(Budget.start(seconds=0.05)):
        while True:  # plain Python, as a compiled template's loop is
            pass
    with watchdog(Budget.start(seconds=0.05)):
        pass  # done before the deadline
    time.sleep(0.2)  # past the deadline: nothing is raised here


def test_one_watchdog_thread_serves_every_rendering_each_at_its_own_deadline() -> None:
    render("{{ 1 }}", CONTEXT)  # the watchdog's thread exists from the first rendering on
    threads = threading.active_count()
    for _ in range(200):
        render("{% for i in range(3) %}{{ i }}{% endfor %}", CONTEXT)
    assert threading.active_count() == threads, "a rendering started a thread of its own"

    outcomes: dict[str, str] = {}

    def spin(name: str, seconds: float, spins: int) -> None:
        try:
            with watchdog(Budget.start(seconds=seconds)):
                for _ in range(spins):
                    pass
            outcomes[name] = "finished"
        except BudgetExceeded:
            outcomes[name] = "interrupted"

    # A block that never ends beside one that ends well within a long deadline.
    short = threading.Thread(target=spin, args=("short", 0.05, 10**12))
    long = threading.Thread(target=spin, args=("long", 30.0, 10**5))
    short.start()
    long.start()
    short.join(timeout=10)
    long.join(timeout=10)
    assert outcomes == {"short": "interrupted", "long": "finished"}
