-- kind: jit-create
-- A just-in-time account with the new password, through a privileged account (CREATE USER
-- privilege). It has no grants: add GRANT statements in a copy of this template for what the
-- session needs.
CREATE USER {{ username }}@{{ values.host | default('%') }} IDENTIFIED BY {{ new_password }};
