"""Activities: every side effect of an operation (store, executors, audit) happens here."""
