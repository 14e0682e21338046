"""Thin routes: validate, call the store or the service, shape the answer."""
