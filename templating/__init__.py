"""Sandboxed Jinja2 rendering of executor templates, with Segura-style tags accepted too."""

from templating import escaping
from templating.render import TemplateContext, TemplateSyntaxProblem, check_syntax, render

__all__ = ["TemplateContext", "TemplateSyntaxProblem", "check_syntax", "escaping", "render"]
