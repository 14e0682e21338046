-- kind: jit-remove
-- Remove a just-in-time account, through a privileged account. IF EXISTS: an account already
-- gone is what was asked for.
DROP USER IF EXISTS {{ username }}@{{ values.host | default('%') }};
