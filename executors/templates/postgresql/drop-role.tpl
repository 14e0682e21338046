-- kind: jit-remove
-- Remove a just-in-time role, through a privileged account. IF EXISTS: a role already gone is
-- what was asked for. A role that owns objects is refused: reassign them first.
DROP ROLE IF EXISTS {{ username | sql_ident }};
